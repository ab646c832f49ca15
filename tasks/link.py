"""Stage 5, compile & link: the model library `lib<model>.a` and a test program, with the target's toolchain.

The library is what a user ships: kernels.c (TVM's), metadata.c and executor.c (ours), and the C
runtime in crt/. The test program adds a generated harness with the pipeline's inputs compiled in.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import fsutil
from tasks.codegen import GeneratedFrom, _env, ctype, weight_lines
from tasks.config import PROJECT_ROOT, Toolchain
from tasks.importer import ModelSignature

CRT_DIR = PROJECT_ROOT / "crt"
CRT_INCLUDE = CRT_DIR / "include"
CRT_LIBRARY_SOURCES = (CRT_DIR / "src" / "crt.c", CRT_DIR / "src" / "registry.c")
CRT_HARNESS_SOURCES = (CRT_DIR / "src" / "harness.c",)

# Our own C must compile clean.
OWN_WARNINGS = ("-Wall", "-Wextra", "-Werror")
# TVM's kernels.c, held to the same bar except, by name:
#   unused-parameter: every packed function takes `self_handle` and `result`, and most use neither.
KERNEL_WARNINGS = OWN_WARNINGS + ("-Wno-unused-parameter",)


class ToolchainError(Exception):
    """A tool the target's toolchain names is not installed."""


class CompileError(Exception):
    """The compiler or linker failed: names the file and shows its first lines of output."""


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
        detail = "\n".join(lines[:20])
        raise CompileError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{detail}")


def compile_c(toolchain: Toolchain, source: Path, obj: Path, include_dirs: list[Path],
              warnings: tuple[str, ...] = OWN_WARNINGS) -> None:
    cc = require_tool(toolchain, toolchain.cc)
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_name(f".{obj.name}.tmp")
    argv = [cc, *toolchain.cflags, *warnings, *[f"-I{d}" for d in include_dirs], "-c", str(source), "-o", str(tmp)]
    try:
        _run(argv, f"compiling {source.name}")
        tmp.replace(obj)
    finally:
        tmp.unlink(missing_ok=True)


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


def link_program(toolchain: Toolchain, objects: list[Path], library: Path, program: Path) -> None:
    cc = require_tool(toolchain, toolchain.cc)
    tmp = program.with_name(f".{program.name}.tmp")
    argv = [cc, *toolchain.cflags, *toolchain.ldflags, *map(str, objects), str(library), *toolchain.libs,
            "-o", str(tmp)]
    try:
        _run(argv, f"linking {program.name}")
        tmp.replace(program)
    finally:
        tmp.unlink(missing_ok=True)


def emit_harness(sig: ModelSignature, inputs: dict[str, np.ndarray], prefix: str, registry_count: int,
                 gen: GeneratedFrom) -> str:
    ins = [{"name": s.name, "dtype": s.dtype, "shape": s.shape, "ctype": ctype(s.dtype),
            "size": max(int(np.prod(s.shape)), 1), "lines": weight_lines(inputs[s.c_name]) or ["0,"]}
           for s in sig.inputs]
    outs = [{"ctype": ctype(s.dtype), "size": max(int(np.prod(s.shape)), 1)} for s in sig.outputs]
    return _env().get_template("harness.c.j2").render(p=prefix, gen=gen, inputs=ins, outputs=outs,
                                                      registry_count=registry_count)


def library_sizes(objects: list[Path]) -> dict[str, int]:
    """Bytes of code, read-only data, data and bss in the library's objects (flash = text + rodata + data)."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for obj in objects:
        with open(obj, "rb") as f:
            for sec in ELFFile(f).iter_sections():
                flags = sec["sh_flags"]
                if not flags & SH_FLAGS.SHF_ALLOC:
                    continue
                if sec["sh_type"] == "SHT_NOBITS":
                    sizes["bss"] += sec["sh_size"]
                elif flags & SH_FLAGS.SHF_EXECINSTR:
                    sizes["text"] += sec["sh_size"]
                elif flags & SH_FLAGS.SHF_WRITE:
                    sizes["data"] += sec["sh_size"]
                else:
                    sizes["rodata"] += sec["sh_size"]
    return {**sizes, "flash": sizes["text"] + sizes["rodata"] + sizes["data"], "ram": sizes["data"] + sizes["bss"]}


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


def _library_sources(model_dir: Path, backend: str) -> list[tuple[Path, tuple[str, ...] | None]]:
    """(file, warnings) for the library: C to compile with those warnings, or an object (None) to take as is."""
    generated: list[tuple[Path, tuple[str, ...] | None]]
    if backend == "llvm":
        generated = [(model_dir / "kernels.o", None), (model_dir / "metadata.o", None)]
    else:
        generated = [(model_dir / "kernels.c", KERNEL_WARNINGS), (model_dir / "metadata.c", OWN_WARNINGS)]
    return generated + [(model_dir / "executor.c", OWN_WARNINGS), *[(s, OWN_WARNINGS) for s in CRT_LIBRARY_SOURCES]]


def run_link(toolchain: Toolchain, backend: str, model_dir: Path, prefix: str, sig: ModelSignature,
             inputs_npz: Path, registry_count: int, arena_bytes: int, gen: GeneratedFrom) -> LinkOutputs:
    """Compile everything in `model_dir`, archive lib<prefix>.a, link program.elf, write sizes.json."""
    obj_dir = model_dir / "obj"
    includes = [model_dir, CRT_INCLUDE]
    fsutil.write_text(model_dir / "harness.c",
                      emit_harness(sig, fsutil.load_npz(inputs_npz), prefix, registry_count, gen))

    library_objects = []
    for src, warnings in _library_sources(model_dir, backend):
        if warnings is None:
            library_objects.append(src)
            continue
        obj = _object(obj_dir, src)
        compile_c(toolchain, src, obj, includes, warnings)
        library_objects.append(obj)
    check_duplicate_symbols(library_objects)
    library = model_dir / f"lib{prefix}.a"
    archive(toolchain, library_objects, library)

    harness_objects = []
    for src in (model_dir / "harness.c", *CRT_HARNESS_SOURCES):
        obj = _object(obj_dir, src)
        compile_c(toolchain, src, obj, includes)
        harness_objects.append(obj)
    program = model_dir / "program.elf"
    link_program(toolchain, harness_objects, library, program)

    fsutil.write_json(model_dir / "sizes.json", {"library": library_sizes(library_objects),
                                                 "arena_bytes": arena_bytes})
    return LinkOutputs(library=library, program=program)


def _object(obj_dir: Path, source: Path) -> Path:
    """The object file for `source`; crt/ sources get a `crt_` prefix so they never clash with generated ones."""
    return obj_dir / (f"crt_{source.stem}.o" if CRT_DIR in source.parents else f"{source.stem}.o")


def link_sources(model_dir: Path, backend: str) -> list[Path]:
    """Every file of `model_dir` that run_link reads, for doit's `file_dep`."""
    return [src for src, _ in _library_sources(model_dir, backend) if CRT_DIR not in src.parents]


def link_targets(model_dir: Path, prefix: str, backend: str) -> list[Path]:
    """Every file run_link writes, for doit's `targets`."""
    compiled = [src for src, warnings in _library_sources(model_dir, backend) if warnings is not None]
    compiled += [model_dir / "harness.c", *CRT_HARNESS_SOURCES]
    return [model_dir / "harness.c", *[_object(model_dir / "obj", s) for s in compiled],
            model_dir / f"lib{prefix}.a", model_dir / "program.elf", model_dir / "sizes.json"]
