"""Several models in one firmware: one library per (firmware, target) with one function registry, one
`TVMSystemLibEntryPoint` and one arena that the models share, since they run in turn.

It is built from the pairs' own outputs: each model's kernels, weights and external modules as the pair's
build and codegen wrote them (every symbol already carries the model's prefix), and its executor emitted again
over the shared arena. The firmware adds the registry of every model's kernels, the arena (sized by the
largest model's plan), a header that includes each model's, and a test program that runs the models in turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import fsutil
from tasks.compile.classify import read_classification
from tasks.compile.plan import Plan
from tasks.config import FirmwareConfig, TargetConfig
from tasks.deps import versions
from tasks.emit.codegen import GeneratedFrom, Registry, SharedArena, _env, emit_executor, weights_of, write_metadata
from tasks.errors import CrtforgeError
from tasks.execute.compare import run_compare
from tasks.execute.run import RunError, parse_outputs, run_logged
from tasks.frontend.importer import read_signature
from tasks.layout import FirmwareFiles, PipelineFiles
from tasks.naming import ModelSymbols
from tasks.pair import Pair
from tasks.toolchain.link import (BARE_METAL_SOURCES, CRT_DIR, CRT_HARNESS_SOURCES, CRT_INCLUDE, CRT_KERNEL_SOURCES,
                                  CRT_LIBRARY_SOURCES, KERNEL_WARNINGS, OWN_WARNINGS, LinkJob, Source,
                                  emit_harness_data, run_link_job, stack_usage_file, unused_kernels)


class FirmwareError(CrtforgeError):
    """Models that cannot share one firmware."""


@dataclass(frozen=True)
class Firmware:
    config: FirmwareConfig
    target: TargetConfig
    pairs: tuple[Pair, ...]  # one per model, in the firmware's order
    files: FirmwareFiles

    @staticmethod
    def at(out: PipelineFiles, config: FirmwareConfig, target: TargetConfig, pairs: tuple[Pair, ...]) -> "Firmware":
        return Firmware(config, target, pairs, out.firmware(target.name, config.name, config.prefix, target.backend))

    @property
    def name(self) -> str:
        return f"{self.target.name}/{self.config.name}"

    @property
    def symbols(self) -> ModelSymbols:
        return ModelSymbols(self.config.prefix)

    def model_sources(self, p: Pair) -> list[tuple[Path, tuple[str, ...] | None]]:
        """(file, warnings) of one model in the library, from its pair: C to compile, or an object (None)."""
        f = p.files
        kernels = (f.kernels, None if f.backend == "llvm" else KERNEL_WARNINGS)
        return [kernels, (self.files.executor_c(p.model.name), OWN_WARNINGS), (f.weights_asm, OWN_WARNINGS),
                (f.external_c, OWN_WARNINGS)]

    def own_sources(self) -> list[tuple[Path, tuple[str, ...] | None]]:
        fw = self.files
        metadata = (fw.metadata_object, None) if fw.backend == "llvm" else (fw.metadata_c, OWN_WARNINGS)
        return [metadata, (fw.arena_c, OWN_WARNINGS)]

    def harness_sources(self) -> list[Path]:
        extra = list(BARE_METAL_SOURCES) if self.target.board.kind == "bare-metal" else []
        return [self.files.harness_c, *CRT_HARNESS_SOURCES, *extra]

    def object_for(self, owner: str, source: Path) -> Path:
        return self.files.object_for("crt" if CRT_DIR in source.parents else owner, source)


def _sources_of(fw: Firmware) -> list[tuple[str, Path, tuple[str, ...] | None]]:
    """(owner, source, warnings) of everything in the library: each model's, the firmware's own, crt/ once."""
    out = [(p.model.name, src, w) for p in fw.pairs for src, w in fw.model_sources(p)]
    out += [("", src, w) for src, w in fw.own_sources()]
    return out + [("crt", src, OWN_WARNINGS) for src in (*CRT_LIBRARY_SOURCES, *CRT_KERNEL_SOURCES)]


def _generated_from(fw: Firmware) -> GeneratedFrom:
    """What the firmware's own files say about their origin: every model's source and its sha256, in order."""
    return GeneratedFrom(model=fw.config.name, kind="firmware",
                         target=fw.target.name, source=", ".join(p.model.source.name for p in fw.pairs),
                         sha256=", ".join(fsutil.sha256_file(p.model.source)[:16] for p in fw.pairs),
                         tvm_version=versions()["apache-tvm"], header=fw.files.header.name)


def build_firmware(fw: Firmware) -> None:
    """The firmware's generated files, lib<firmware>.a, program.elf and sizes.json."""
    f, sym = fw.files, fw.symbols
    shared = SharedArena(firmware=fw.config.name, symbol=sym.arena, file=f.arena_c.name)
    functions, models, harness_models, arena_bytes, unused = [], [], [], 0, set(CRT_KERNEL_SOURCES)
    for p in fw.pairs:
        plan_dict = fsutil.read_json(p.files.plan_json)
        plan = Plan.from_dict(plan_dict)
        classification = read_classification(p.files.classification_json)
        sig = read_signature(p.model_files.import_json)
        gen = GeneratedFrom.of(p)
        # The pair's weights.S is linked as it is; only the executor changes (its tensors move to the shared arena).
        weights = weights_of(plan, fsutil.load_npz(p.files.params_npz), classification, p.model.prefix, gen,
                             p.files.weights_bin.name)
        fsutil.write_text(f.executor_c(p.model.name), emit_executor(plan, weights, sig, p.model.prefix, gen, shared))
        functions += Registry.from_classification(p.model.prefix, classification).functions
        arena_bytes = max(arena_bytes, plan.arena_bytes)
        unused &= unused_kernels(plan_dict)
        models.append({"name": p.model.name, "header": p.files.header.name, "arena_bytes": plan.arena_bytes,
                       "arena_macro": f"{p.symbols.macro}_ARENA_BYTES"})
        harness_models.append({"name": p.model.name, "prefix": p.model.prefix,
                               **emit_harness_data(sig, fsutil.load_npz(p.model_files.inputs_npz))})
    names = [e.name for e in functions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # model prefixes are unique (config), so this means a kernel escaped its model's prefix
        raise FirmwareError(f"firmware {fw.config.name}: kernels {', '.join(twice)} are defined by two models.")
    registry = Registry(fw.config.prefix, tuple(functions))
    gen = _generated_from(fw)
    write_metadata(registry, gen, fw.target.tvm_target(), f)
    common: dict[str, Any] = {"fw": fw.config, "P": sym.macro, "models": models, "header": f.header.name, "gen": gen}
    env = _env()
    fsutil.write_text(f.header, env.get_template("firmware.h.j2").render(guard=sym.include_guard,
                                                                       arena_bytes=arena_bytes, **common))
    fsutil.write_text(f.arena_c, env.get_template("firmware_arena.c.j2").render(symbol=sym.arena,
                                                                              section=sym.arena_section, **common))
    fsutil.write_text(f.harness_c, env.get_template("firmware_harness.c.j2").render(
        **{**common, "models": harness_models}, registry_count=len(functions)))

    run_link_job(LinkJob(
        what=f"firmware {fw.config.name}", target=fw.target,
        includes=[f.dir, *(p.files.dir for p in fw.pairs), CRT_INCLUDE],
        library_sources=[Source(src, None if w is None else fw.object_for(owner, src), w or (), _includes(fw, owner))
                         for owner, src, w in _sources_of(fw)],
        not_archived=frozenset(unused),
        harness_sources=[(src, fw.object_for("", src)) for src in fw.harness_sources()],
        library=f.library, program=f.program, linker_script=f.linker_script,
        measure_linker_script=f.measure_linker_script, sizes_json=f.sizes_json, arena_bytes=arena_bytes,
        budget=fw.config.budget, budget_key=f"firmware.{fw.config.name}.budget",
        stack_roots=tuple(f"{p.model.prefix}_run" for p in fw.pairs)))


def _includes(fw: Firmware, owner: str) -> tuple[Path, ...]:
    """A model's sources see its own folder first (its header, and the weights.bin its weights.S names); the
    firmware's see every model's header."""
    pair = next((p for p in fw.pairs if p.model.name == owner), None)
    if pair is not None:
        return (pair.files.dir, CRT_INCLUDE)
    return (fw.files.dir, *(p.files.dir for p in fw.pairs), CRT_INCLUDE)


def firmware_inputs(fw: Firmware) -> list[Path]:
    """Every file build_firmware reads, for doit's `file_dep`."""
    reads = []
    for p in fw.pairs:
        f = p.files
        reads += [f.plan_json, f.params_npz, f.classification_json, f.header, f.weights_bin,
                  p.model_files.import_json, p.model_files.inputs_npz, p.model.source]
        reads += [src for src, _ in fw.model_sources(p) if src != fw.files.executor_c(p.model.name)]
    return reads


def firmware_targets(fw: Firmware) -> list[Path]:
    """Every file build_firmware writes, for doit's `targets`."""
    f = fw.files
    compiled = [(src, fw.object_for(owner, src)) for owner, src, w in _sources_of(fw) if w is not None]
    compiled += [(src, fw.object_for("", src)) for src in fw.harness_sources()]
    bare_metal = fw.target.board.kind == "bare-metal"
    script = [f.linker_script] if bare_metal else []
    usage = [stack_usage_file(obj) for src, obj in compiled if bare_metal and src.suffix == ".c"]
    return [*f.metadata, f.header, f.arena_c, f.harness_c, *(f.executor_c(p.model.name) for p in fw.pairs),
            *(obj for _, obj in compiled), *script, *usage, f.library, f.program, f.sizes_json]


def split_by_model(stdout: str, count: int) -> list[str]:
    """The program's output as one text per model: what follows its `crtforge-model <index>` line, each closed by
    `crtforge-done` so parse_outputs reads it as a program of its own would print it."""
    parts: list[list[str]] = [[] for _ in range(count)]
    current = None
    done = False
    for line in stdout.splitlines():
        words = line.split()
        if words[:1] == ["crtforge-model"] and len(words) == 2:
            current = int(words[1])
            if not 0 <= current < count:
                raise RunError(f"the program printed outputs of model {current}; the firmware has {count}.")
        elif words[:1] == ["crtforge-done"]:
            done = True
        elif words[:1] in (["crtforge-error"], ["crtforge-fault"]) or current is None:
            for part in parts:  # a failure concerns every model not yet printed; parse_outputs raises on it
                part.append(line)
        else:
            parts[current].append(line)
    return ["\n".join([*part, "crtforge-done"] if done else part) for part in parts]


def test_firmware(fw: Firmware) -> dict[str, Any]:
    """Run the test program and compare each model's outputs with its reference: per model test.json, and the
    firmware's test.json with every model's outcome."""
    f = fw.files
    stdout = run_logged(fw.target.board, f.program, fw.target.timeout, f.run_log)
    results = {}
    for p, text in zip(fw.pairs, split_by_model(stdout, len(fw.pairs))):
        sig = read_signature(p.model_files.import_json)
        fsutil.save_npz(f.outputs_npz(p.model.name), parse_outputs(text, sig))
        m = p.model_files
        results[p.model.name] = run_compare(sig, f.outputs_npz(p.model.name), m.reference_npz, m.reference_json,
                                            p.model.rtol, p.model.atol, f.model_test_json(p.model.name))
    sizes = fsutil.read_json(f.sizes_json)
    summary = {"passed": all(r["passed"] for r in results.values()), "firmware": fw.config.name,
               "target": fw.target.name, "arena_bytes": sizes["arena_bytes"],
               "model_arena_bytes": {p.model.name: fsutil.read_json(p.files.plan_json)["arena_bytes"]
                                     for p in fw.pairs},
               "models": {name: {k: r[k] for k in ("passed", "max_abs_error", "max_rel_error", "reference")}
                          for name, r in results.items()}}
    fsutil.write_json(f.test_json, summary)
    return summary
