"""crtforge: `doit build` and `doit test` for the pipeline in pipeline.toml (or `pipeline=PATH`).

Thin on purpose: it reads the pipeline and yields the tasks that tasks/wiring.py describes. At load it does only
what every command needs: validate the pipeline and make its out folder, where doit keeps its database.
"""

import sys

from doit import get_var

from tasks import wiring

wiring.exit_on_interrupt()
PIPELINE = wiring.load(get_var("pipeline", "pipeline.toml"))
DOIT_CONFIG = wiring.doit_config(PIPELINE)
# Held until this process ends, by commands that build: another doit on the same out folder waits for this one.
PIPELINE_LOCK = wiring.lock(PIPELINE, sys.argv)


def task_import():
    """Stage 1: import each model into Relax (once per model)."""
    yield from wiring.import_tasks(PIPELINE)


def task_reference():
    """Inputs and reference outputs per model."""
    yield from wiring.reference_tasks(PIPELINE)


def task_tune():
    """Stage 2a: tuning records for targets with `tune` (committed ones from tuning/, else a MetaSchedule search)."""
    yield from wiring.tune_tasks(PIPELINE)


def task_retune():
    """Tune again and refresh the committed records in tuning/ (retune:<target>/<model> for one pair)."""
    yield from wiring.retune_tasks(PIPELINE)


def task_relax():
    """Stage 2: TVM build (Relax pipeline, TIR kernels, plan)."""
    yield from wiring.relax_tasks(PIPELINE)


def task_classify():
    """Stage 3: classify the runtime modules."""
    yield from wiring.classify_tasks(PIPELINE)


def task_codegen():
    """Stage 4: generate the metadata module, executor and header."""
    yield from wiring.codegen_tasks(PIPELINE)


def task_link():
    """Stage 5: compile & link with the target's toolchain."""
    yield from wiring.link_tasks(PIPELINE)


def task_execute():
    """Stage 6a: run the test programs."""
    yield from wiring.run_tasks(PIPELINE)


def task_compare():
    """Stage 6b: compare outputs with the reference."""
    yield from wiring.compare_tasks(PIPELINE)


def task_bisect():
    """On demand: the first kernel call of a pair whose output differs from the reference (bisect:<target>/<model>)."""
    yield from wiring.bisect_tasks(PIPELINE)


def task_firmware():
    """Several models in one library and test program, per [firmware.NAME] and target."""
    yield from wiring.firmware_tasks(PIPELINE)


def task_firmware_test():
    """Run each firmware's test program and compare every model with its reference."""
    yield from wiring.firmware_test_tasks(PIPELINE)


def task_package():
    """Per pair and firmware: a CMake and pkg-config package with its provenance manifest, and an MLF tarball."""
    yield from wiring.package_tasks(PIPELINE)


def task_build():
    return wiring.build_task(PIPELINE)


def task_test():
    return wiring.test_task(PIPELINE)


def task_report():
    return wiring.report_task(PIPELINE)


@wiring.delayed_creator("conformance", "sweep", "sweep-vm")
def task_conformance():
    """Conformance: the onnx package's model tests on host, host-llvm and cortex-m4 (conformance=GLOBS)."""
    yield from wiring.conformance_tasks(PIPELINE, get_var("conformance", "*"))


def task_bench():
    """Benchmarks: instructions per inference, flash and RAM, peers; out/bench.md."""
    yield from wiring.bench_tasks(PIPELINE)
