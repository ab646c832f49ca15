"""One (model, target) pair and the stages that run on it, as data.

Each stage is a function of a stage module that takes the pair (or, per model, the model and its files).
The stages are named here by module and function, not imported: doit's wiring (tasks/wiring.py) derives a
task's code dependencies from the module, and imports it only when the task runs, so `doit list` stays light.
The conformance sweep (tasks/conformance.py) runs the same functions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import STAGES, ModelConfig, TargetConfig
from tasks.layout import ModelFiles, PairFiles, PipelineFiles, TuneFiles, committed_tuning
from tasks.naming import ModelSymbols


@dataclass(frozen=True)
class Stage:
    name: str  # as the conformance report and doit's task basenames use it
    module: str  # the stage module, e.g. tasks.compile.relax_build
    function: str  # its entry point: f(pair) for pair stages, f(model, model_files) for model stages

    def __post_init__(self) -> None:
        # The name selects the settings the stage's tasks check (config.read_by): it must be one config knows.
        if self.name not in STAGES:
            raise ValueError(f"stage '{self.name}' is not in config.STAGES {STAGES}")

    def __call__(self, *args: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.function)(*args)


# Per model, once for all its targets.
IMPORT = Stage("import", "tasks.frontend.importer", "import_model")
REFERENCE = Stage("reference", "tasks.frontend.reference", "reference_model")
# Per pair, in order; TUNE only for targets with `tune`, before BUILD (and `doit retune`: RETUNE).
TUNE = Stage("tune", "tasks.compile.tune", "tune_pair")
RETUNE = Stage("tune", "tasks.compile.tune", "retune_pair")
BUILD = Stage("build", "tasks.compile.relax_build", "build_pair")
CLASSIFY = Stage("classify", "tasks.compile.classify", "classify_pair")
CODEGEN = Stage("codegen", "tasks.emit.codegen", "codegen_pair")
LINK = Stage("link", "tasks.toolchain.link", "link_pair")
EXECUTE = Stage("run", "tasks.execute.run", "execute_pair")
COMPARE = Stage("compare", "tasks.execute.compare", "compare_pair")
# On demand (`doit bisect:<target>/<model>`): the first kernel call whose output differs from the reference.
BISECT = Stage("run", "tasks.execute.bisect", "run_bisect")
PAIR_STAGES = (BUILD, CLASSIFY, CODEGEN, LINK, EXECUTE, COMPARE)
# Per (firmware, target), from its models' pairs (tasks/firmware.py): f(firmware).
FIRMWARE = Stage("link", "tasks.firmware", "build_firmware")
FIRMWARE_TEST = Stage("run", "tasks.firmware", "test_firmware")
# `doit package` (tasks/package.py): per pair, and per firmware.
PACKAGE = Stage("link", "tasks.package", "package_pair")
PACKAGE_FIRMWARE = Stage("link", "tasks.package", "package_firmware")


@dataclass(frozen=True)
class Pair:
    model: ModelConfig
    target: TargetConfig
    files: PairFiles  # out/<target>/<model>/
    model_files: ModelFiles  # out/_models/<model>/: the model's import.json, inputs and reference
    pipeline_file: Path  # for messages that cite a key

    @staticmethod
    def at(out: PipelineFiles, model: ModelConfig, target: TargetConfig, pipeline_file: Path) -> "Pair":
        return Pair(model, target, out.pair(target.name, model.name, model.prefix, target.backend),
                    out.model(model.name), pipeline_file)

    @property
    def name(self) -> str:
        return f"{self.target.name}/{self.model.name}"

    @property
    def tuning_files(self) -> TuneFiles:
        """The committed tuning records of this pair (tuning/<target>/<model>/ beside the pipeline file)."""
        return committed_tuning(self.pipeline_file, self.target.name, self.model.name)

    @property
    def symbols(self) -> ModelSymbols:
        return ModelSymbols(self.model.prefix)
