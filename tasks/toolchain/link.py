"""Stage 5, compile & link: the model library `lib<model>.a` and a test program, with the target's toolchain.

The library is what a user ships: the kernels (kernels.c, or TVM's kernels.o), the metadata module,
executor.c, and the C runtime in crt/. The test program adds a generated harness with the pipeline's
inputs compiled in; on a bare-metal board also our start-up code and a linker script generated from
the board's memory map. A model that does not fit the board is refused with what it needs.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from tasks import fsutil
from tasks.compile.classify import read_classification
from tasks.config import DEFAULT_PLACEMENT, PLACEABLE, PROJECT_ROOT, Board, Budget, Memory, TargetConfig, Toolchain
from tasks.emit.codegen import GeneratedFrom, _env, ctype, weight_lines
from tasks.frontend.importer import ModelSignature, read_signature
from tasks.layout import PairFiles
from tasks.pair import Pair
from tasks.errors import CrtforgeError
from tasks.toolchain.stack import StackBound, program_stack_bound

CRT_DIR = PROJECT_ROOT / "crt"
CRT_INCLUDE = CRT_DIR / "include"
CRT_LIBRARY_SOURCES = (CRT_DIR / "src" / "crt.c", CRT_DIR / "src" / "registry.c")
CRT_HARNESS_SOURCES = (CRT_DIR / "src" / "harness.c",)
# The kernels external modules call: compiled for every pair, archived only into the libraries that call them.
CRT_INT8_SOURCE = CRT_DIR / "src" / "int8.c"  # tasks/compile/int8.py
CRT_DENSE_SOURCE = CRT_DIR / "src" / "dense.c"  # tasks/compile/offload.py
CRT_KERNEL_SOURCES = (CRT_DENSE_SOURCE, CRT_INT8_SOURCE)
CORTEX_M_DIR = CRT_DIR / "boards" / "cortex-m"
BARE_METAL_SOURCES = (CORTEX_M_DIR / "startup.c",)
LINKER_SCRIPT_TEMPLATE = CORTEX_M_DIR / "link.ld.j2"

# Our own C must compile clean.
OWN_WARNINGS = ("-Wall", "-Wextra", "-Werror")
# TVM's kernels.c: its warnings are TVM's codegen's, which we cannot fix, so they do not stop a build (real nets
# give unused-but-set variables, unused parameters and shapes); everything of ours stays under -Werror.
KERNEL_WARNINGS = ("-w",)

# For measuring what a program needs, the board's memories are linked as this large (never overlapping).
_MEASURE_BYTES = 256 * 1024 * 1024


class ToolchainError(CrtforgeError):
    """A tool the target's toolchain names is not installed."""


class CompileError(CrtforgeError):
    """The compiler or linker failed, or the program does not fit the board: names the file and what to do."""


@dataclass(frozen=True)
class LinkOutputs:
    library: Path
    program: Path


def require_tool(toolchain: Toolchain, tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(f"{toolchain.file.name}: '{tool}' is not installed (toolchain '{toolchain.name}'). "
                             f"HINT: apt-get install {toolchain.debian_package}")
    return path


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        # The first diagnostic says most; the command and the rest follow.
        first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no output")
        detail = "\n".join(lines[:20])
        raise CompileError(f"{what} failed: {first.strip()} (exit {proc.returncode})\n$ {' '.join(argv)}\n{detail}")


def compile_c(target: TargetConfig, source: Path, obj: Path, include_dirs: list[Path],
              warnings: tuple[str, ...] = OWN_WARNINGS, defines: tuple[str, ...] = ()) -> None:
    cc = require_tool(target.toolchain, target.toolchain.cc)
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_name(f".{obj.name}.tmp")
    # Paths in debug info and __FILE__ relative to the model folder and the project: the same object from any
    # checkout.
    prefix_map = {str(include_dirs[0]): ".", str(PROJECT_ROOT): "crtforge"}
    maps = [f"-ffile-prefix-map={old}={new}" for old, new in prefix_map.items()]
    # An assembler file's .incbin names its blob relative to its own folder (weights.S, weights.bin).
    incbin = [f"-Wa,-I{source.parent}"] if source.suffix == ".S" else []
    # On a bare-metal board each function's frame, for the worst-case stack (tasks/toolchain/stack.py); the
    # compiler names the file after the object it writes.
    usage = ["-fstack-usage"] if target.board.kind == "bare-metal" and source.suffix == ".c" else []
    argv = [cc, *target.cflags(kernel=source in CRT_KERNEL_SOURCES), *warnings, *maps, *incbin, *usage,
            *[f"-I{d}" for d in include_dirs], *[f"-D{d}" for d in defines], "-c", str(source), "-o", str(tmp)]
    try:
        _run(argv, f"compiling {source.name}")
        if usage:
            _keep_stack_usage(tmp.with_suffix(".su"), stack_usage_file(obj), prefix_map)
        tmp.replace(obj)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".su").unlink(missing_ok=True)


def _keep_stack_usage(written: Path, kept: Path, prefix_map: dict[str, str]) -> None:
    """The compiler's .su beside the object, its source paths mapped as -ffile-prefix-map maps the object's (the
    compiler writes them as given), so that it too is the same from any checkout. Clang writes none for a file
    without functions: an empty one says so."""
    text = written.read_text() if written.exists() else ""
    for old, new in prefix_map.items():
        text = text.replace(old, new)
    fsutil.write_text(kept, text)


def stack_usage_file(obj: Path) -> Path:
    """The -fstack-usage file of an object compiled for a bare-metal board."""
    return obj.with_suffix(".su")


def archive(toolchain: Toolchain, objects: list[Path], library: Path) -> None:
    ar = require_tool(toolchain, toolchain.ar)
    tmp = library.with_name(f".{library.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # D: deterministic (no timestamps or uids), so rebuilds are byte-identical.
        _run([ar, "rcsD", str(tmp), *map(str, objects)], f"archiving {library.name}")
        tmp.replace(library)
    finally:
        tmp.unlink(missing_ok=True)


def link_program(target: TargetConfig, objects: list[Path], library: Path, program: Path,
                 linker_script: Path | None = None) -> None:
    cc = require_tool(target.toolchain, target.toolchain.cc)
    tmp = program.with_name(f".{program.name}.tmp")
    script = ["-T", str(linker_script)] if linker_script else []
    argv = [cc, *target.cflags(), *target.ldflags(), *script, *map(str, objects), str(library),
            *target.toolchain.libs, "-o", str(tmp)]
    try:
        _run(argv, f"linking {program.name}")
        tmp.replace(program)
    finally:
        tmp.unlink(missing_ok=True)


def linker_script(board: Board, memory_bytes: int | None = None,
                  placement: tuple[tuple[str, str], ...] = tuple(DEFAULT_PLACEMENT.items())) -> str:
    """The board's linker script, with the target's placement; `memory_bytes` overrides every memory's size (to
    measure a program: then the board's other memories move to addresses of their own, above flash and RAM)."""
    mem = board.memory
    assert mem is not None
    template = jinja2.Template(LINKER_SCRIPT_TEMPLATE.read_text(), keep_trailing_newline=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    placed = [{"what": what, "region": region, "sections": PLACEABLE[what][0], "zeroed": PLACEABLE[what][1]}
              for what, region in placement if region != DEFAULT_PLACEMENT[what]]
    regions = mem.regions
    if memory_bytes:
        top = max(mem.flash_origin, mem.ram_origin) + memory_bytes
        regions = tuple(replace(r, origin=top + i * memory_bytes, size=memory_bytes) for i, r in enumerate(regions))
    return template.render(board=board, flash_origin=mem.flash_origin, ram_origin=mem.ram_origin,
                           flash_size=memory_bytes or mem.flash_size, ram_size=memory_bytes or mem.ram_size,
                           stack_size=mem.stack_size, heap_size=mem.heap_size, regions=regions, placed=placed)


def emit_harness_data(sig: ModelSignature, inputs: dict[str, np.ndarray]) -> dict[str, list[dict[str, Any]]]:
    """The compiled-in inputs and the output buffers of a test or timing program, for its template."""
    ins = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "ctype": ctype(s.dtype),
            "size": max(int(np.prod(s.shape)), 1), "lines": weight_lines(inputs[s.c_name]) or ["0,"]}
           for s in sig.inputs]
    outs = [{"ctype": ctype(s.dtype), "size": max(int(np.prod(s.shape)), 1)} for s in sig.outputs]
    return {"inputs": ins, "outputs": outs}


def emit_harness(sig: ModelSignature, inputs: dict[str, np.ndarray], prefix: str, registry_count: int,
                 gen: GeneratedFrom) -> str:
    return _env().get_template("harness.c.j2").render(p=prefix, gen=gen, registry_count=registry_count,
                                                      **emit_harness_data(sig, inputs))


# --- sizes ----------------------------------------------------------------------------------------------

SIZE_KEYS = ("text", "rodata", "data", "bss", "heap", "stack")


def in_ram(address: int, flags: int, nobits: bool, memory: Memory | None) -> bool:
    """Whether an allocated section or symbol lives in RAM: by the board's memory map where there is one
    (const data with relocations is writable in the ELF yet placed in flash), else by its flags."""
    from elftools.elf.constants import SH_FLAGS

    if memory is not None:
        return memory.ram_origin <= address < memory.ram_origin + memory.ram_size
    return nobits or bool(flags & SH_FLAGS.SHF_WRITE)


def with_totals(sizes: dict[str, int]) -> dict[str, int]:
    """flash = text + rodata + data (the initial values of data live in flash), ram = data + bss."""
    return {**sizes, "flash": sizes["text"] + sizes["rodata"] + sizes["data"], "ram": sizes["data"] + sizes["bss"]}


def section_sizes(elf_path: Path, memory: Memory | None = None) -> dict[str, int]:
    """Bytes per kind of allocated section, with_totals. The board's reserved .heap and .stack are counted
    apart from bss."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    sizes = dict.fromkeys(SIZE_KEYS, 0)
    with open(elf_path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            flags = sec["sh_flags"]
            if not flags & SH_FLAGS.SHF_ALLOC or sec.name.startswith(PLACED_PREFIX):
                continue  # not loaded, or placed in one of the board's other memories (memory_usage counts those)
            nobits = sec["sh_type"] == "SHT_NOBITS"
            if sec.name in (".heap", ".stack"):
                kind = sec.name[1:]
            elif nobits:
                kind = "bss"
            elif flags & SH_FLAGS.SHF_EXECINSTR:
                kind = "text"
            elif in_ram(sec["sh_addr"], flags, nobits, memory):
                kind = "data"
            else:
                kind = "rodata"
            sizes[kind] += sec["sh_size"]
    return with_totals(sizes)


# The output sections the linker script gives a placement (.crtforge_weights, .crtforge_arena).
PLACED_PREFIX = ".crtforge_"


def memory_usage(elf_path: Path, memory: Memory, placement: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Bytes the program takes in each of the board's other memories: what the placement put there."""
    from elftools.elf.elffile import ELFFile

    where = dict(placement)
    usage = {r.name: 0 for r in memory.regions}
    with open(elf_path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            what = sec.name.removeprefix(PLACED_PREFIX)
            if sec.name.startswith(PLACED_PREFIX) and where.get(what) in usage:
                usage[where[what]] += sec["sh_size"]
    return usage


def library_sizes(objects: list[Path]) -> dict[str, int]:
    """The same split, summed over the library's objects (no libc, no start-up: what the model costs)."""
    total = dict.fromkeys(SIZE_KEYS, 0)
    for obj in objects:
        for k, v in section_sizes(obj).items():
            if k in total:
                total[k] += v
    return with_totals(total)


def check_fits(what: str, board: Board, sizes: dict[str, int], arena_bytes: int,
               usage: dict[str, int] | None = None) -> None:
    """Refuse a program whose flash, RAM (with the board's stack and heap) or other memory exceeds the board's."""
    mem = board.memory
    assert mem is not None
    kib = lambda n: f"{n / 1024:.1f}"  # noqa: E731
    for region in mem.regions:
        need = (usage or {}).get(region.name, 0)
        if need > region.size:
            raise CompileError(f"{what} needs {kib(need)} KiB in memory '{region.name}' of board {board.name}, "
                               f"which has {kib(region.size)} KiB. HINT: place less there (the target's placement)")
    ram_need = sizes["ram"] + mem.stack_size + mem.heap_size
    if ram_need > mem.ram_size:
        raise CompileError(f"{what} needs {kib(ram_need)} KiB RAM, board {board.name} has {kib(mem.ram_size)} KiB "
                           f"(arena {kib(arena_bytes)} KiB, other data and bss {kib(sizes['ram'] - arena_bytes)} KiB, "
                           f"stack {kib(mem.stack_size)} KiB, heap {kib(mem.heap_size)} KiB). "
                           "HINT: use a board with more RAM, or a smaller model")
    if sizes["flash"] > mem.flash_size:
        raise CompileError(f"{what} needs {kib(sizes['flash'])} KiB flash, board {board.name} has "
                           f"{kib(mem.flash_size)} KiB (code {kib(sizes['text'])} KiB, read-only data and weights "
                           f"{kib(sizes['rodata'])} KiB). HINT: use a board with more flash, or a smaller model")


def check_budget(what: str, budget: Budget, key: str, sizes: dict[str, int], arena_bytes: int) -> dict[str, Any]:
    """Refuse a program over the target's `budget`, naming the part that is over and by how much; else each limit
    with its use and headroom (for sizes.json)."""
    parts = {"flash": f"code {sizes['text']:,} B, read-only data and weights {sizes['rodata']:,} B, "
                      f"initial data {sizes['data']:,} B",
             "ram": f"arena {arena_bytes:,} B, other data and bss {sizes['ram'] - arena_bytes:,} B"}
    report = {}
    for memory in ("flash", "ram"):
        limit = getattr(budget, memory)
        if limit is None:
            continue
        used = sizes[memory]
        if used > limit:
            raise CompileError(f"{what} is over its {memory} budget: {used:,} B, the budget ({key}.{memory}) is "
                               f"{limit:,} B, over by {used - limit:,} B ({parts[memory]}). HINT: raise the budget, "
                               "or make the model smaller")
        report[memory] = {"limit": limit, "used": used, "headroom": limit - used}
    return report


def check_stack(what: str, board: Board, bound: StackBound) -> None:
    """Refuse a program whose worst-case stack exceeds the stack the board reserves; an unbounded one is
    reported (sizes.json), not refused: nothing says it overflows."""
    mem = board.memory
    assert mem is not None
    if bound.bytes is not None and bound.bytes > mem.stack_size:
        chain = " -> ".join(f"{name} ({frame} B)" for name, frame in zip(bound.path, bound.frames))
        raise CompileError(f"{what} needs up to {bound.bytes:,} B of stack, board {board.name} reserves "
                           f"{mem.stack_size:,} B (stack_size); the deepest chain: {chain}. HINT: raise the "
                           f"board's memory.stack_size in {board.file.name}, or make the model smaller")


# --- objects and symbols -------------------------------------------------------------------------------------

def defined_symbols(obj: Path) -> set[str]:
    """Global (not weak) symbols that an object file defines."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    names = set()
    with open(obj, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.iter_symbols():
                    if sym["st_info"]["bind"] == "STB_GLOBAL" and sym["st_shndx"] != "SHN_UNDEF":
                        names.add(sym.name)
    return names


def check_duplicate_symbols(objects: list[Path]) -> None:
    """Two objects defining one symbol would make the link fail (or pick one silently): name both."""
    owner: dict[str, Path] = {}
    for obj in objects:
        for name in sorted(defined_symbols(obj)):
            if name in owner:
                raise CompileError(f"duplicate symbol '{name}': defined in {owner[name].name} and {obj.name}")
            owner[name] = obj


def library_sources(files: PairFiles) -> list[tuple[Path, tuple[str, ...] | None]]:
    """(file, warnings) for the library: C to compile with those warnings, or an object (None) to take as is."""
    generated: list[tuple[Path, tuple[str, ...] | None]]
    if files.backend == "llvm":
        generated = [(files.kernels, None), (files.metadata_object, None)]
    else:
        generated = [(files.kernels, KERNEL_WARNINGS), (files.metadata_c, OWN_WARNINGS)]
    generated += [(files.executor_c, OWN_WARNINGS), (files.weights_asm, OWN_WARNINGS), (files.external_c, OWN_WARNINGS)]
    return generated + [(s, OWN_WARNINGS) for s in (*CRT_LIBRARY_SOURCES, *CRT_KERNEL_SOURCES)]


def harness_sources(files: PairFiles, board: Board) -> list[Path]:
    extra = list(BARE_METAL_SOURCES) if board.kind == "bare-metal" else []
    return [files.harness_c, *CRT_HARNESS_SOURCES, *extra]


@dataclass(frozen=True)
class Source:
    """One file of a library: C or assembler to compile into `object` (with its `includes`, the first of which
    also holds what an assembler file's .incbin names), or, with `object` None, an object taken as is."""
    path: Path
    object: Path | None
    warnings: tuple[str, ...] = OWN_WARNINGS
    includes: tuple[Path, ...] = ()


@dataclass(frozen=True)
class LinkJob:
    """A library and its test program, as link_pair and the firmware stage (tasks/firmware.py) describe them."""
    what: str  # "model sine", "firmware kws": for messages
    target: TargetConfig
    includes: list[Path]
    library_sources: list[Source]
    harness_sources: list[tuple[Path, Path]]  # (source, object)
    library: Path
    program: Path
    linker_script: Path  # written for bare-metal boards
    measure_linker_script: Path
    sizes_json: Path
    arena_bytes: int
    budget: Budget
    budget_key: str  # e.g. targets.t.budget: where the budget is set, for the message
    # crt kernels no call reaches: compiled (the same objects for every pair), but not archived
    not_archived: frozenset[Path] = frozenset()
    # the functions whose worst-case stack a bare-metal program must have room for: each model's <prefix>_run
    stack_roots: tuple[str, ...] = ()


def run_link_job(job: LinkJob) -> None:
    """Compile everything, archive the library, link the program (refused with figures if it does not fit the
    board or its budget), write sizes.json."""
    target = job.target
    library_objects = []
    for src in job.library_sources:
        if src.object is None:
            library_objects.append(src.path)
            continue
        compile_c(target, src.path, src.object, list(src.includes or job.includes), src.warnings)
        if src.path not in job.not_archived:
            library_objects.append(src.object)
    check_duplicate_symbols(library_objects)
    archive(target.toolchain, library_objects, job.library)

    harness_objects = []
    for src, obj in job.harness_sources:
        compile_c(target, src, obj, job.includes)
        harness_objects.append(obj)
    script = None
    if target.board.kind == "bare-metal":
        # Link once with outsized memories to learn what the program needs, so that a model too big for the
        # board is refused with figures rather than a linker's "region overflowed".
        fsutil.write_text(job.measure_linker_script, linker_script(target.board, _MEASURE_BYTES, target.placement))
        try:
            link_program(target, harness_objects, job.library, job.program, job.measure_linker_script)
        finally:
            job.measure_linker_script.unlink(missing_ok=True)
        try:
            check_fits(job.what, target.board, section_sizes(job.program, target.board.memory), job.arena_bytes,
                       memory_usage(job.program, target.board.memory, target.placement))
        except CompileError:
            job.program.unlink()
            raise
        script = job.linker_script
        fsutil.write_text(script, linker_script(target.board, placement=target.placement))
    link_program(target, harness_objects, job.library, job.program, script)

    program_sizes = section_sizes(job.program, target.board.memory)
    bound = None
    try:
        budget = check_budget(f"{job.what} on target {target.name}", job.budget, job.budget_key, program_sizes,
                              job.arena_bytes)
        if target.board.kind == "bare-metal" and job.stack_roots:
            bound = job_stack_bound(job)
            check_stack(f"{job.what} on target {target.name}", target.board, bound)
    except CrtforgeError:  # over the budget or the stack, or objdump missing or failing: no program to trust
        job.program.unlink()
        raise
    stack = target.board.memory.stack_size if target.board.memory else None
    memories = memory_usage(job.program, target.board.memory, target.placement) if target.board.memory else {}
    fsutil.write_json(job.sizes_json, {"program": program_sizes,
                                       "library": library_sizes(library_objects), "memories": memories,
                                       "arena_bytes": job.arena_bytes, "stack_bytes": stack, "budget": budget,
                                       "stack_bound": bound.as_json() if bound else None})


def job_stack_bound(job: LinkJob) -> StackBound:
    """The worst-case stack of the job's roots in its linked program, with the frames -fstack-usage wrote."""
    toolchain = job.target.toolchain
    if not toolchain.objdump:
        return StackBound(job.stack_roots[0], None, f"{toolchain.file.name} names no objdump (key objdump)", (), ())
    usage = [stack_usage_file(src.object) for src in job.library_sources if src.object is not None]
    usage += [stack_usage_file(obj) for _, obj in job.harness_sources]
    mem = job.target.board.memory
    assert mem is not None
    return program_stack_bound(require_tool(toolchain, toolchain.objdump), job.program,
                               [u for u in usage if u.is_file()], job.stack_roots, (mem.flash_origin, mem.flash_size))


def link_pair(p: Pair) -> LinkOutputs:
    """Stage 5: compile everything, archive lib<prefix>.a, link program.elf, write sizes.json."""
    f, target = p.files, p.target
    sig = read_signature(p.model_files.import_json)
    registry_count = len(read_classification(f.classification_json).registry_functions)
    plan = fsutil.read_json(f.plan_json)
    gen = GeneratedFrom.of(p)
    fsutil.write_text(f.harness_c, emit_harness(sig, fsutil.load_npz(p.model_files.inputs_npz), p.model.prefix,
                                                registry_count, gen))
    sources = [Source(src, None if warnings is None else f.object_for(src, CRT_DIR), warnings or ())
               for src, warnings in library_sources(f)]
    run_link_job(LinkJob(
        what=f"model {p.model.name}", target=target, includes=[f.dir, CRT_INCLUDE],
        library_sources=sources, not_archived=frozenset(unused_kernels(plan)),
        harness_sources=[(src, f.object_for(src, CRT_DIR)) for src in harness_sources(f, target.board)],
        library=f.library, program=f.program, linker_script=f.linker_script,
        measure_linker_script=f.measure_linker_script, sizes_json=f.sizes_json, arena_bytes=plan["arena_bytes"],
        budget=target.budget, budget_key=f"targets.{target.name}.budget", stack_roots=(f"{p.model.prefix}_run",)))
    return LinkOutputs(library=f.library, program=f.program)


def unused_kernels(plan: dict[str, Any]) -> set[Path]:
    """crt kernel sources that no call of the plan reaches: left out of the library, so that its size (the model
    flash of the report) counts only what the model needs. The plan's ops say which calls are int8 ops and which
    are other external functions (the offloaded dense layers)."""
    ops = plan.get("ops") or {}
    unused = set()
    if not ops.get("integer"):
        unused.add(CRT_INT8_SOURCE)
    if not ops.get("other"):
        unused.add(CRT_DENSE_SOURCE)
    return unused


def link_inputs(files: PairFiles) -> list[Path]:
    """Every generated file of the pair that link_pair compiles or takes as is, for doit's `file_dep` (and the
    blob weights.S pulls in)."""
    return [*(src for src, _ in library_sources(files) if CRT_DIR not in src.parents), files.weights_bin]


def link_targets(files: PairFiles, board: Board) -> list[Path]:
    """Every file link_pair writes, for doit's `targets`."""
    compiled = [src for src, warnings in library_sources(files) if warnings is not None]
    compiled += harness_sources(files, board)
    script = [files.linker_script] if board.kind == "bare-metal" else []
    usage = [stack_usage_file(files.object_for(s, CRT_DIR)) for s in compiled
             if board.kind == "bare-metal" and s.suffix == ".c"]
    return [files.harness_c, *[files.object_for(s, CRT_DIR) for s in compiled], *script, *usage, files.library,
            files.program, files.sizes_json]


def board_with_memory(board: Board, **changes: int) -> Board:
    """`board` with some memory sizes changed (e.g. a smaller RAM), for what-if checks and tests."""
    assert board.memory is not None
    return replace(board, memory=replace(board.memory, **changes))
