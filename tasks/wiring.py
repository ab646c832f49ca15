"""doit wiring: the task creators for every stage. They only describe tasks; actions call the stages.

One subtask per (model, target), named `<target>/<model>`, writing under `out/<target>/<model>/`.
Each declares the files it reads (including its own stage modules), every file it writes, and
`config_changed` on exactly the settings it reads, so doit reruns what changed and nothing else.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from tasks.config import (EXTERNAL_FILE, KERNELS_FILE, METADATA_FILES, PROJECT_ROOT, ConfigError, ModelConfig, Pipeline,
                          TargetConfig, load_pipeline)

TASKS_DIR = Path(__file__).resolve().parent
TEMPLATES = TASKS_DIR / "templates"
CRT_FILES = sorted(str(p) for p in (PROJECT_ROOT / "crt").rglob("*") if p.suffix in (".c", ".h", ".j2"))


def _stage(*modules: str) -> list[str]:
    return [str(TASKS_DIR / f"{m}.py") for m in modules]


def _tvm_version() -> str:
    try:
        return importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# Errors the stages raise for bad input: shown as one message, not a traceback.
def _user_errors() -> tuple[type[Exception], ...]:
    from tasks.classify import ClassifyError
    from tasks.codegen import CodegenError
    from tasks.importer import ModelImportError
    from tasks.link import CompileError, ToolchainError
    from tasks.reference import ReferenceError
    from tasks.relax_build import BuildError
    from tasks.run import RunError

    return (ConfigError, ModelImportError, ReferenceError, BuildError, ClassifyError, CodegenError,
            ToolchainError, CompileError, RunError)


def _action(func: Callable[..., Any], *args: Any) -> tuple[Callable[[], Any], tuple, dict]:
    """A doit python-action that turns a stage's user error into a TaskFailed with its message."""

    def run() -> Any:
        try:
            func(*args)
        except _user_errors() as e:
            return TaskFailed(str(e))
        return None

    run.__name__ = getattr(func, "__name__", "stage")
    return (run, (), {})


def load(path: str) -> Pipeline:
    """The pipeline, or exit with the one-line error (doit would show a traceback)."""
    try:
        return load_pipeline(path)
    except ConfigError as e:
        print(f"crtforge: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def doit_config(pipeline: Pipeline) -> dict[str, Any]:
    # The dependency database sits beside the pipeline file (whose folder exists), one per pipeline file.
    dep_file = pipeline.file.with_name(f".{pipeline.file.stem}.doit.db")
    return {"default_tasks": ["build"], "dep_file": str(dep_file), "backend": "sqlite3", "verbosity": 1}


@dataclass(frozen=True)
class PairFiles:
    """Every file of one (model, target) pair under out/<target>/<model>/."""
    dir: Path
    prefix: str
    backend: str

    @property
    def import_json(self) -> Path: return self.dir / "import.json"
    @property
    def kernels(self) -> Path: return self.dir / KERNELS_FILE[self.backend]
    @property
    def metadata(self) -> list[Path]: return [self.dir / n for n in METADATA_FILES[self.backend]]
    @property
    def plan_json(self) -> Path: return self.dir / "plan.json"
    @property
    def params_npz(self) -> Path: return self.dir / "params.npz"
    @property
    def modules_json(self) -> Path: return self.dir / "modules.json"
    @property
    def classification_json(self) -> Path: return self.dir / "classification.json"
    @property
    def executor_c(self) -> Path: return self.dir / "executor.c"
    @property
    def header(self) -> Path: return self.dir / f"{self.prefix}.h"
    @property
    def program(self) -> Path: return self.dir / "program.elf"
    @property
    def sizes_json(self) -> Path: return self.dir / "sizes.json"
    @property
    def outputs_npz(self) -> Path: return self.dir / "outputs.npz"
    @property
    def run_log(self) -> Path: return self.dir / "run.log"
    @property
    def test_json(self) -> Path: return self.dir / "test.json"


def pair_files(pipeline: Pipeline, model: ModelConfig, target: TargetConfig) -> PairFiles:
    return PairFiles(pipeline.out / target.name / model.name, model.prefix, target.backend)


def reference_dir(pipeline: Pipeline, model: ModelConfig) -> Path:
    """Inputs and reference outputs are per model, shared by every target ('_' never starts a target name)."""
    return pipeline.out / "_models" / model.name


def _model_files(model: ModelConfig) -> list[str]:
    files = [model.source]
    if model.inputs:
        files.append(model.inputs)
    if model.expected:
        files.extend(sorted(model.expected.rglob("*.pb")) if model.expected.is_dir() else [model.expected])
    return [str(f) for f in files]


def _generated_from(model: ModelConfig, target: TargetConfig):
    from tasks.codegen import GeneratedFrom
    from tasks.fsutil import sha256_file

    return GeneratedFrom(model=model.name, target=target.name, source=model.source.name,
                         sha256=sha256_file(model.source), tvm_version=_tvm_version(), header=f"{model.prefix}.h")


def _signature(import_json: Path):
    from tasks.fsutil import read_json
    from tasks.importer import ModelSignature

    return ModelSignature.from_dict(read_json(import_json)["signature"])


# --- actions: read what earlier stages wrote, then call the stage --------------------------------------

def _do_import(model: ModelConfig, f: PairFiles) -> None:
    from tasks.importer import run_import

    run_import(model.source, f.import_json)


def _do_reference(model: ModelConfig, out_dir: Path) -> None:
    from tasks.reference import run_reference

    run_reference(model.name, model.source, model.inputs, model.expected, out_dir)


def _do_build(model: ModelConfig, target: TargetConfig, f: PairFiles, pipeline_file: Path) -> None:
    from tasks.relax_build import run_build

    run_build(model.source, model.name, model.prefix, target.name, target.tvm_target(), _signature(f.import_json),
              f.dir, where=f"{pipeline_file.name}: targets.{target.name}.tvm", offload=target.offload)


def _do_classify(f: PairFiles) -> None:
    from tasks.classify import ModuleRecord, classify
    from tasks.fsutil import read_json, write_json

    records = [ModuleRecord.from_dict(m) for m in read_json(f.modules_json)]
    write_json(f.classification_json, classify(records).to_dict())


def _do_codegen(model: ModelConfig, target: TargetConfig, f: PairFiles) -> None:
    from tasks.codegen import run_codegen

    run_codegen(f.plan_json, f.params_npz, f.classification_json, f.import_json, model.prefix,
                _generated_from(model, target), target.tvm_target(), f.dir)


def _do_link(model: ModelConfig, target: TargetConfig, f: PairFiles, inputs_npz: Path) -> None:
    from tasks.fsutil import read_json
    from tasks.link import run_link

    registry = read_json(f.classification_json)["registry"]
    arena = read_json(f.plan_json)["arena_bytes"]
    run_link(target, model.name, f.dir, model.prefix, _signature(f.import_json), inputs_npz, len(registry), arena,
             _generated_from(model, target))


def _do_run(target: TargetConfig, f: PairFiles) -> None:
    from tasks.run import run_program

    run_program(target.board, f.program, _signature(f.import_json), target.timeout, f.outputs_npz, f.run_log)


def _do_compare(model: ModelConfig, f: PairFiles, ref_dir: Path) -> None:
    from tasks.compare import run_compare

    run_compare(_signature(f.import_json), f.outputs_npz, ref_dir / "reference.npz", ref_dir / "reference.json",
                f.sizes_json, model.rtol, model.atol, f.test_json)


def _do_report(pipeline: Pipeline) -> TaskFailed | None:
    from tasks.report import write_report

    pairs = [(t.name, m.name, pair_files(pipeline, m, t).dir) for m, t in pipeline.pairs()]
    text, passed = write_report(pairs, pipeline.out / "results.md")
    print(text, end="")
    return None if passed else TaskFailed("not every (model, target) pair passed: see the table above")


# --- task generators -------------------------------------------------------------------------------------

def _name(model: ModelConfig, target: TargetConfig) -> str:
    return f"{target.name}/{model.name}"


def reference_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    used = {m.name for m, _ in pipeline.pairs()}
    for model in pipeline.models.values():
        if model.name not in used:
            continue
        out = reference_dir(pipeline, model)
        yield {"name": model.name, "doc": "inputs and reference outputs of a model (expected, or TVM's Relax VM)",
               "actions": [_action(_do_reference, model, out)],
               "file_dep": _model_files(model) + _stage("reference", "importer", "fsutil", "naming"),
               "targets": [str(out / n) for n in ("inputs.npz", "reference.npz", "reference.json")],
               "uptodate": [config_changed({"model": model.settings(), "tvm": _tvm_version()})], "clean": True}


def import_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        yield {"name": _name(model, target), "doc": "import the model (ONNX/TFLite) into Relax; record its signature",
               "actions": [_action(_do_import, model, f)],
               "file_dep": [str(model.source)] + _stage("importer", "fsutil", "naming"),
               "targets": [str(f.import_json)],
               "uptodate": [config_changed({"source": str(model.source), "tvm": _tvm_version()})], "clean": True}


def relax_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        yield {"name": _name(model, target),
               "doc": "TVM build: lower with the Relax pipeline, compile the kernels, extract the plan",
               "actions": [_action(_do_build, model, target, f, pipeline.file)],
               "file_dep": [str(model.source), str(f.import_json)]
               + _stage("relax_build", "plan", "importer", "classify", "offload", "fsutil", "naming")
               + [str(TEMPLATES / "offload_dense.c.j2")],
               "targets": [str(p) for p in (f.kernels, f.plan_json, f.params_npz, f.modules_json,
                                            *([f.dir / EXTERNAL_FILE] if target.offload else []))],
               "uptodate": [config_changed({"prefix": model.prefix, "target": target.name,
                                            "tvm_target": target.tvm_target(), "offload": list(target.offload),
                                            "tvm": _tvm_version()})],
               "clean": True}


def classify_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        yield {"name": _name(model, target), "doc": "classify every runtime module: registry, constants or refused",
               "actions": [_action(_do_classify, f)],
               "file_dep": [str(f.modules_json)] + _stage("classify", "fsutil"),
               "targets": [str(f.classification_json)], "clean": True}


def codegen_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        yield {"name": _name(model, target), "doc": "generate metadata.c (registry), executor.c and the model header",
               "actions": [_action(_do_codegen, model, target, f)],
               "file_dep": [str(p) for p in (f.plan_json, f.params_npz, f.classification_json, f.import_json,
                                             model.source)]
               + _stage("codegen", "plan", "classify", "importer", "fsutil")
               + [str(TEMPLATES / t) for t in ("metadata.c.j2", "metadata.ll.j2", "executor.c.j2", "model.h.j2")],
               "targets": [str(p) for p in (*f.metadata, f.executor_c, f.header)],
               "uptodate": [config_changed({"model": model.name, "prefix": model.prefix, "target": target.name,
                                            "tvm_target": target.tvm_target(), "tvm": _tvm_version()})],
               "clean": True}


def link_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    from tasks.link import link_sources, link_targets

    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        inputs_npz = reference_dir(pipeline, model) / "inputs.npz"
        yield {"name": _name(model, target),
               "doc": "compile & link lib<model>.a and the test program with the target's toolchain",
               "actions": [_action(_do_link, model, target, f, inputs_npz)],
               "file_dep": [str(p) for p in (*link_sources(f.dir, target.backend, bool(target.offload)), f.header,
                                             f.import_json,
                                             f.plan_json, f.classification_json, inputs_npz,
                                             target.toolchain.file, target.board.file)]
               + CRT_FILES + _stage("link", "codegen", "fsutil") + [str(TEMPLATES / "harness.c.j2")],
               "targets": [str(p) for p in link_targets(f.dir, model.prefix, target.backend, target.board,
                                                       bool(target.offload))],
               "uptodate": [config_changed({"toolchain": target.toolchain.settings(), "board": target.board.settings(),
                                            "model": model.name, "target": target.name, "backend": target.backend,
                                            "offload": list(target.offload)})],
               "clean": True}


def run_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        yield {"name": _name(model, target), "doc": "run the test program with the target's runner",
               "actions": [_action(_do_run, target, f)],
               "file_dep": [str(f.program), str(f.import_json), str(target.board.file)] + _stage("run", "fsutil"),
               "targets": [str(f.outputs_npz), str(f.run_log)],
               "uptodate": [config_changed({"board": target.board.settings(), "timeout": target.timeout})],
               "clean": True}


def compare_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = pair_files(pipeline, model, target)
        ref = reference_dir(pipeline, model)
        yield {"name": _name(model, target), "doc": "compare outputs with the reference; write test.json",
               "actions": [_action(_do_compare, model, f, ref)],
               "file_dep": [str(p) for p in (f.outputs_npz, ref / "reference.npz", ref / "reference.json",
                                             f.sizes_json, f.import_json)] + _stage("compare", "fsutil"),
               "targets": [str(f.test_json)],
               "uptodate": [config_changed({"rtol": model.rtol, "atol": model.atol})], "clean": True}


def build_task() -> dict[str, Any]:
    return {"doc": "build every (model, target) pair up to its linked program", "actions": None,
            "task_dep": ["link"]}


def test_task(pipeline: Pipeline) -> dict[str, Any]:
    return {"doc": "run and compare every pair, then print the results table (out/results.md)",
            "actions": [(_do_report, (pipeline,), {})], "task_dep": ["compare"], "verbosity": 2,
            "uptodate": [False]}
