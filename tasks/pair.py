"""One (model, target) pair: its files under out/<target>/<model>/, and each stage as an action on it.

The actions read what earlier stages wrote, then call the stage module. doit's tasks (tasks/wiring.py)
and the conformance sweep (tasks/conformance.py) run the same actions.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tasks.config import EXTERNAL_FILE, KERNELS_FILE, METADATA_FILES, ConfigError, ModelConfig, TargetConfig


def tvm_version() -> str:
    try:
        return importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def user_errors() -> tuple[type[Exception], ...]:
    """Errors the stages raise for bad input or a failed step: shown as one message, not a traceback."""
    from tasks.bench import BenchError
    from tasks.classify import ClassifyError
    from tasks.codegen import CodegenError
    from tasks.importer import ModelImportError
    from tasks.link import CompileError, ToolchainError
    from tasks.reference import ReferenceError
    from tasks.relax_build import BuildError
    from tasks.run import RunError

    from tasks.qemu_insns import QemuInsnsError

    return (ConfigError, ModelImportError, ReferenceError, BuildError, ClassifyError, CodegenError,
            ToolchainError, CompileError, RunError, BenchError, QemuInsnsError)


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
    def external_c(self) -> Path: return self.dir / EXTERNAL_FILE
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


def reference_dir(out: Path, model: ModelConfig) -> Path:
    """The model's inputs and reference outputs, shared by its targets ('_' starts no target name)."""
    return out / "_models" / model.name


@dataclass(frozen=True)
class Pair:
    model: ModelConfig
    target: TargetConfig
    files: PairFiles
    reference_dir: Path  # the model's inputs.npz, reference.npz, reference.json
    pipeline_file: Path  # for messages that cite a key

    @staticmethod
    def at(out: Path, model: ModelConfig, target: TargetConfig, pipeline_file: Path) -> "Pair":
        """The pair's files under out/<target>/<model>/, and the model's reference_dir."""
        return Pair(model, target, PairFiles(out / target.name / model.name, model.prefix, target.backend),
                    reference_dir(out, model), pipeline_file)

    @property
    def inputs_npz(self) -> Path:
        return self.reference_dir / "inputs.npz"


def generated_from(model: ModelConfig, target: TargetConfig):
    from tasks.codegen import GeneratedFrom
    from tasks.fsutil import sha256_file

    return GeneratedFrom(model=model.name, target=target.name, source=model.source.name,
                         sha256=sha256_file(model.source), tvm_version=tvm_version(), header=f"{model.prefix}.h")


def signature(import_json: Path):
    from tasks.fsutil import read_json
    from tasks.importer import ModelSignature

    return ModelSignature.from_dict(read_json(import_json)["signature"])


def reference(model: ModelConfig, out_dir: Path) -> None:
    from tasks.reference import run_reference

    run_reference(model.name, model.source, model.inputs, model.expected, out_dir)


def import_model(p: Pair) -> None:
    from tasks.importer import run_import

    run_import(p.model.source, p.files.import_json)


def build(p: Pair) -> None:
    from tasks.relax_build import run_build

    run_build(p.model.source, p.model.name, p.model.prefix, p.target.name, p.target.tvm_target(),
              signature(p.files.import_json), p.files.dir, where=f"{p.pipeline_file.name}: targets.{p.target.name}.tvm",
              offload=p.target.offload, profile=p.target.profile)


def classify(p: Pair) -> None:
    from tasks.classify import ModuleRecord
    from tasks.classify import classify as classify_records
    from tasks.fsutil import read_json, write_json

    records = [ModuleRecord.from_dict(m) for m in read_json(p.files.modules_json)]
    write_json(p.files.classification_json, classify_records(records).to_dict())


def codegen(p: Pair) -> None:
    from tasks.codegen import run_codegen

    f = p.files
    run_codegen(f.plan_json, f.params_npz, f.classification_json, f.import_json, p.model.prefix,
                generated_from(p.model, p.target), p.target.tvm_target(), f.dir)


def link(p: Pair) -> None:
    from tasks.fsutil import read_json
    from tasks.link import run_link

    f = p.files
    registry = read_json(f.classification_json)["registry"]
    arena = read_json(f.plan_json)["arena_bytes"]
    run_link(p.target, p.model.name, f.dir, p.model.prefix, signature(f.import_json), p.inputs_npz, len(registry),
             arena, generated_from(p.model, p.target))


def execute(p: Pair) -> None:
    from tasks.run import run_program

    f = p.files
    run_program(p.target.board, f.program, signature(f.import_json), p.target.timeout, f.outputs_npz, f.run_log)


def compare(p: Pair) -> None:
    from tasks.compare import run_compare

    f = p.files
    run_compare(signature(f.import_json), f.outputs_npz, p.reference_dir / "reference.npz",
                p.reference_dir / "reference.json", f.sizes_json, p.model.rtol, p.model.atol, f.test_json)


# The stages of a pair in order, by the names the conformance report uses.
STAGES: tuple[tuple[str, Callable[[Pair], None]], ...] = (
    ("import", import_model), ("build", build), ("classify", classify), ("codegen", codegen), ("link", link),
    ("run", execute), ("compare", compare))
