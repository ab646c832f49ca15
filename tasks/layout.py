"""The one authority for file names: every path crtforge writes under `out/` is a property here.

    out/.crtforge.doit.db, out/.crtforge.lock       the dependency database and the lock that guards it
    out/_models/<model>/                            per model: import.json, inputs, reference (ModelFiles)
    out/<target>/<model>/                           per pair: every stage's files (PairFiles)
    out/<target>/_firmware/<firmware>/              per firmware and target: its library and test (FirmwareFiles)
    out/results.md, report.*, bench.*, conformance.*   per pipeline (PipelineFiles)
    tuning/<target>/<model>/                        beside the pipeline file: committed tuning records (TuneFiles)

The database and the lock live in the folder they describe: two pipeline files that share `out` share both,
and a pipeline that moves `out` away and back finds the database that matches what is there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tasks.config import PROJECT_ROOT


def project_relative(path: Path) -> str:
    """A path as generated files record it: relative to the project (two clones write the same bytes)."""
    return os.path.relpath(Path(path).resolve(), PROJECT_ROOT)

# Per backend: the kernels file the build stage writes, and the metadata module files codegen writes.
KERNELS_FILE = {"c": "kernels.c", "llvm": "kernels.o"}
METADATA_FILES = {"c": ("metadata.c",), "llvm": ("metadata.ll", "metadata.o")}
MODELS_DIR = "_models"  # '_' starts no target name, so it never clashes with out/<target>/
FIRMWARE_DIR = "_firmware"  # nor a model name: out/<target>/_firmware/ never clashes with a pair
TUNING_DIR = "tuning"  # committed tuning records, beside the pipeline file (tasks/compile/tune.py)


@dataclass(frozen=True)
class TuneFiles:
    """A MetaSchedule JSON database: out/<target>/<model>/tune/ (what the build applies), or the committed copy
    tuning/<target>/<model>/."""
    dir: Path

    @property
    def workloads(self) -> Path: return self.dir / "database_workload.json"
    @property
    def records(self) -> Path: return self.dir / "database_tuning_record.json"
    @property
    def summary_json(self) -> Path: return self.dir / "tune.json"  # what the tuning gained, or where it came from

    @property
    def database(self) -> tuple[Path, Path]:
        return (self.workloads, self.records)

    def exists(self) -> bool:
        return all(f.is_file() for f in self.database)

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.database if f.is_file())


def committed_tuning(pipeline_file: Path, target: str, model: str) -> TuneFiles:
    return TuneFiles(pipeline_file.parent / TUNING_DIR / target / model)


@dataclass(frozen=True)
class ModelFiles:
    """out/_models/<model>/: written once per model, read by every target's pairs."""
    dir: Path

    @property
    def import_json(self) -> Path: return self.dir / "import.json"
    @property
    def inputs_npz(self) -> Path: return self.dir / "inputs.npz"
    @property
    def reference_npz(self) -> Path: return self.dir / "reference.npz"
    @property
    def reference_json(self) -> Path: return self.dir / "reference.json"
    @property
    def vm_json(self) -> Path: return self.dir / "vm.json"  # conformance: TVM's own VM on the test

    @property
    def reference_files(self) -> tuple[Path, Path, Path]:
        return (self.inputs_npz, self.reference_npz, self.reference_json)


@dataclass(frozen=True)
class LinkedFiles:
    """What a pair's folder and a firmware's both hold: a library with its header and metadata module, a test
    program and its outcome, and the package of the library."""
    dir: Path
    prefix: str  # the C prefix (tasks/naming.py): the header and library are named after it
    backend: str  # "c" or "llvm"

    @property
    def metadata(self) -> list[Path]: return [self.dir / n for n in METADATA_FILES[self.backend]]
    @property
    def metadata_ll(self) -> Path: return self.dir / "metadata.ll"
    @property
    def metadata_object(self) -> Path: return self.dir / "metadata.o"
    @property
    def metadata_c(self) -> Path: return self.dir / "metadata.c"
    @property
    def header(self) -> Path: return self.dir / f"{self.prefix}.h"
    @property
    def harness_c(self) -> Path: return self.dir / "harness.c"
    @property
    def obj_dir(self) -> Path: return self.dir / "obj"
    @property
    def library(self) -> Path: return self.dir / f"lib{self.prefix}.a"
    @property
    def program(self) -> Path: return self.dir / "program.elf"
    @property
    def linker_script(self) -> Path: return self.dir / "board.ld"
    @property
    def measure_linker_script(self) -> Path: return self.dir / "measure.ld"  # removed after use
    @property
    def sizes_json(self) -> Path: return self.dir / "sizes.json"
    @property
    def run_log(self) -> Path: return self.dir / "run.log"
    @property
    def test_json(self) -> Path: return self.dir / "test.json"  # a firmware's: every model's outcome
    @property
    def package_dir(self) -> Path: return self.dir / "package"  # tasks/package.py: an install prefix


@dataclass(frozen=True)
class PairFiles(LinkedFiles):
    """out/<target>/<model>/: every file of one (model, target) pair."""
    @property
    def kernels(self) -> Path: return self.dir / KERNELS_FILE[self.backend]
    @property
    def external_c(self) -> Path: return self.dir / "external.c"
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
    def weights_bin(self) -> Path: return self.dir / "weights.bin"
    @property
    def weights_asm(self) -> Path: return self.dir / "weights.S"
    @property
    def outputs_npz(self) -> Path: return self.dir / "outputs.npz"
    @property
    def bench_json(self) -> Path: return self.dir / "bench.json"
    @property
    def timing_c(self) -> Path: return self.dir / "timing.c"
    @property
    def timing_object(self) -> Path: return self.obj_dir / "timing.o"
    @property
    def timing_program(self) -> Path: return self.dir / "timing.elf"
    @property
    def profile_dir(self) -> Path: return self.dir / "profile"  # tasks/bench/profile.py: the marked program
    @property
    def profile_object(self) -> Path: return self.profile_dir / "executor.o"
    @property
    def profile_program(self) -> Path: return self.profile_dir / "program.elf"
    @property
    def profile_json(self) -> Path: return self.dir / "profile.json"
    @property
    def bisect_dir(self) -> Path: return self.dir / "bisect"  # tasks/execute/bisect.py: the tracing program
    @property
    def bisect_program(self) -> Path: return self.bisect_dir / "program.elf"
    @property
    def bisect_log(self) -> Path: return self.bisect_dir / "run.log"
    @property
    def bisect_json(self) -> Path: return self.dir / "bisect.json"
    @property
    def callgrind_out(self) -> Path: return self.dir / "callgrind.out"
    @property
    def result_json(self) -> Path: return self.dir / "result.json"  # conformance: the pair's outcome
    @property
    def tune(self) -> TuneFiles: return TuneFiles(self.dir / "tune")
    @property
    def mlf_tar(self) -> Path: return self.dir / f"{self.dir.name}.mlf.tar"  # Model Library Format

    def object_for(self, source: Path, crt_dir: Path) -> Path:
        """The object of `source`; crt/ sources get a `crt_` prefix so they never clash with generated ones."""
        return self.obj_dir / (f"crt_{source.stem}.o" if crt_dir in source.parents else f"{source.stem}.o")


@dataclass(frozen=True)
class FirmwareFiles(LinkedFiles):
    """out/<target>/_firmware/<firmware>/: one firmware's library, header and test program (tasks/firmware.py), and
    per model a folder with its executor, outputs and test.json."""
    @property
    def arena_c(self) -> Path: return self.dir / "arena.c"

    def executor_c(self, model: str) -> Path: return self.dir / model / "executor.c"  # on the shared arena
    def outputs_npz(self, model: str) -> Path: return self.dir / model / "outputs.npz"
    def model_test_json(self, model: str) -> Path: return self.dir / model / "test.json"

    def object_for(self, owner: str, source: Path) -> Path:
        """The object of a source of `owner`: a model's (named after it: every model has a kernels.c), "crt" for
        crt/'s, or "" for the firmware's own."""
        return self.obj_dir / (f"{owner}_{source.stem}.o" if owner else f"{source.stem}.o")


@dataclass(frozen=True)
class PipelineFiles:
    """Everything under one pipeline's `out` folder."""
    out: Path

    @property
    def dep_db(self) -> Path: return self.out / ".crtforge.doit.db"
    @property
    def lock(self) -> Path: return self.out / ".crtforge.lock"
    @property
    def results_md(self) -> Path: return self.out / "results.md"
    @property
    def report_html(self) -> Path: return self.out / "report.html"  # tasks/report/html.py
    @property
    def report_json(self) -> Path: return self.out / "report.json"  # its figures, and the baseline they are compared with
    @property
    def bench_json(self) -> Path: return self.out / "bench.json"
    @property
    def bench_md(self) -> Path: return self.out / "bench.md"
    @property
    def bench_dir(self) -> Path: return self.out / "bench"
    @property
    def insns_plugin(self) -> Path: return self.bench_dir / "crtforge_insns.so"
    @property
    def peers_dir(self) -> Path: return self.bench_dir / "peers"
    @property
    def conformance_md(self) -> Path: return self.out / "conformance.md"
    @property
    def conformance_json(self) -> Path: return self.out / "conformance.json"
    @property
    def conformance_dir(self) -> Path: return self.out / "conformance"
    @property
    def node_tests_dir(self) -> Path: return self.conformance_dir / "_onnx_node_tests"  # written by the sweep

    def peer_json(self, peer: str, model: str) -> Path:
        return self.peers_dir / f"{peer}-{model}.json"

    def plot(self, target: str) -> Path:
        return self.bench_dir / f"{target}.png"

    def model(self, name: str) -> ModelFiles:
        return ModelFiles(self.out / MODELS_DIR / name)

    def pair(self, target: str, model: str, prefix: str, backend: str) -> PairFiles:
        return PairFiles(self.out / target / model, prefix, backend)

    def firmware(self, target: str, name: str, prefix: str, backend: str) -> FirmwareFiles:
        return FirmwareFiles(self.out / target / FIRMWARE_DIR / name, prefix, backend)
