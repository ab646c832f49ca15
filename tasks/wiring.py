"""doit wiring: the task creators for every stage. They only describe tasks; actions call the stages.

Per model, `import:<model>` and `reference:<model>` write out/_models/<model>/; per (model, target), one subtask
per stage, named `<target>/<model>`, writes out/<target>/<model>/ (paths from tasks/layout.py). Each task's
dependencies are derived: `file_dep` holds the data files it reads and the source of every crtforge module its
stage can run (tasks/deps.py); `config_changed` holds the settings its stage reads (config.settings), and the
versions of the packages whose behaviour is part of a result.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from doit import create_after
from doit.exceptions import TaskFailed
from doit.tools import config_changed

from tasks import deps, fsutil
from tasks.config import (PROJECT_ROOT, ConfigError, FirmwareConfig, ModelConfig, Pipeline, TargetConfig,
                          load_pipeline, settings)
from tasks.dask_run import RemoteCall
from tasks.errors import CrtforgeError
from tasks.layout import PipelineFiles
from tasks.pair import (BUILD, CLASSIFY, CODEGEN, COMPARE, EXECUTE, FIRMWARE, FIRMWARE_TEST, IMPORT, LINK, PACKAGE,
                        PACKAGE_FIRMWARE, PAIR_STAGES, BISECT, REFERENCE, RETUNE, TUNE, Pair, Stage)

# The runtime and start-up sources the link stage compiles, and the headers they include.
CRT_FILES = sorted(str(p) for p in (PROJECT_ROOT / "crt").rglob("*") if p.suffix in (".c", ".h", ".j2"))
# doit commands that only read the dependency database: they do not take the pipeline's lock.
READ_ONLY_COMMANDS = frozenset({"list", "help", "info", "dumpdb", "tabcompletion"})


# Set by the SIGINT handler. The handler also raises SystemExit, but code between Python frames may swallow it:
# TVM's FoldConstant evaluates constants through Python and skips folding when that raises, so an interrupted
# build would carry on and record an unfolded kernel as done. Every action checks the flag before it returns.
INTERRUPTED = threading.Event()


def _action(func: Callable[..., Any], *args: Any) -> tuple[Callable[[], Any], tuple, dict]:
    """A doit python-action that turns a stage's error into a TaskFailed with its message (no traceback), and
    never reports success for a stage that Ctrl-C reached."""

    def run() -> Any:
        try:
            func(*args)
        except CrtforgeError as e:
            return TaskFailed(str(e))
        finally:
            if INTERRUPTED.is_set():
                raise SystemExit(130)
        return None

    run.__name__ = getattr(func, "function", getattr(func, "__name__", "stage"))
    run.crtforge_call = RemoteCall(func, args)  # what `-P dask` ships to a worker (tasks/dask_run.py)
    return (run, (), {})


# --- what dodo.py does at load ----------------------------------------------------------------------------------

def load(path: str) -> Pipeline:
    """The pipeline, with its out folder ready for the dependency database; or exit with the one-line error
    (doit would show a traceback)."""
    try:
        pipeline = load_pipeline(path)
        _prepare_out(pipeline)
        return pipeline
    except ConfigError as e:
        print(f"crtforge: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _prepare_out(pipeline: Pipeline) -> None:
    """The out folder must exist and be writable before doit opens its database there."""
    out = pipeline.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".crtforge.probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(pipeline.file, "pipeline.out", f"cannot write to the out folder {out}: {e.strerror}.",
                          "name a folder you can write to") from None


def doit_config(pipeline: Pipeline) -> dict[str, Any]:
    # The database lives in the out folder it describes (tasks/layout.py says why).
    return {"default_tasks": ["build"], "dep_file": str(PipelineFiles(pipeline.out).dep_db), "backend": "sqlite3",
            "verbosity": 1}


def doit_command(argv: list[str]) -> str:
    """The doit command of a command line, as doit picks it: the first word after doit's own options, if it is
    a command; otherwise `run`."""
    words = list(argv[1:])
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in ("-f", "--file", "-d", "--dir") and words:
            words.pop(0)
    return words[0] if words and "=" not in words[0] else "run"


def lock(pipeline: Pipeline, argv: list[str]) -> TextIO | None:
    """For a doit command that writes (builds, cleans, forgets), hold the out folder's lock for the life of this
    process: a second doit on the same out folder, from any pipeline file, waits for the first. The caller keeps
    the returned file open; the lock goes with the process, even a killed one. Read-only commands take none."""
    if doit_command(argv) in READ_ONLY_COMMANDS:
        return None
    path = PipelineFiles(pipeline.out).lock
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"crtforge: another doit is running on {pipeline.out.name}/ (lock {path.name}); waiting for it",
              file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def exit_on_interrupt() -> None:
    """Ctrl-C: one line and exit status 130, not a traceback. Outputs are written atomically and doit records a
    task only once it succeeded, so an interrupted task simply runs again next time."""
    main = os.getpid()

    def interrupted(signum: int, frame: Any) -> None:
        INTERRUPTED.set()
        if os.getpid() == main:
            print("\ncrtforge: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130)

    signal.signal(signal.SIGINT, interrupted)


# --- per model and per pair -------------------------------------------------------------------------------------

def _pair(pipeline: Pipeline, model: ModelConfig, target: TargetConfig) -> Pair:
    return Pair.at(PipelineFiles(pipeline.out), model, target, pipeline.file)


def _paths(*paths: Path | str) -> list[str]:
    return [str(p) for p in paths]


def _uptodate(stage: str, model: ModelConfig, target: TargetConfig | None = None) -> list:
    read = {"model": settings(model, stage), "versions": deps.versions()}
    if target is not None:
        read["target"] = settings(target, stage)
    return [config_changed(read)]


def _models_used(pipeline: Pipeline) -> list[ModelConfig]:
    return list({m.name: m for m, _ in pipeline.pairs()}.values())


def import_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    out = PipelineFiles(pipeline.out)
    for model in _models_used(pipeline):
        files = out.model(model.name)
        yield _cached(pipeline, "import", {
            "name": model.name, "doc": "import the model (ONNX/TFLite) into Relax; record its signature",
            "actions": [_action(IMPORT, model, files)],
            "file_dep": _paths(*model.import_files()) + list(deps.code_files(IMPORT.module)),
            "targets": _paths(files.import_json), "uptodate": _uptodate(IMPORT.name, model), "clean": True})


def reference_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    out = PipelineFiles(pipeline.out)
    for model in _models_used(pipeline):
        files = out.model(model.name)
        yield _cached(pipeline, "reference", {
            "name": model.name, "doc": "inputs and reference outputs of a model (expected, onnxruntime, TFLM or TVM's VM)",
            "actions": [_action(REFERENCE, model, files)],
            "file_dep": _paths(*model.files(), files.import_json) + list(deps.code_files(REFERENCE.module)),
            "targets": _paths(*files.reference_files), "uptodate": _uptodate(REFERENCE.name, model), "clean": True})


def _pair_task(pipeline: Pipeline, stage: Stage, model: ModelConfig, target: TargetConfig, doc: str,
               reads: list[Path], writes: list[Path], extra_code: list[str] = ()) -> dict[str, Any]:
    p = _pair(pipeline, model, target)
    return {"name": p.name, "doc": doc, "actions": [_action(stage, p)],
            "file_dep": _paths(*reads) + list(deps.code_files(stage.module)) + list(extra_code),
            "targets": _paths(*writes), "uptodate": _uptodate(stage.name, model, target), "clean": True}


def _cached(pipeline: Pipeline, basename: str, task: dict[str, Any], compiler: str | None = None) -> dict[str, Any]:
    """The stage task (doit's `basename:name`) with its action run through the content-addressed cache
    (tasks/cache.py), keyed by what doit checks too: its files, its settings (its config_changed), and the
    compiler's version."""
    from tasks.cache import CacheSpec, run_cached

    (run, _, _), = task["actions"]
    call = run.crtforge_call
    spec = CacheSpec(task=f"{basename}:{task['name']}", stage=f"{call.func.module}.{call.func.function}",
                     root=pipeline.file.parent,
                     file_dep=tuple(Path(d) for d in task["file_dep"]), targets=tuple(Path(t) for t in task["targets"]),
                     config=[u.config for u in task["uptodate"] if isinstance(u, config_changed)], compiler=compiler)
    return {**task, "actions": [_action(run_cached, spec, call.func, *call.args)]}


def _tune_reads(p: Pair) -> list[Path]:
    """What a tuning run reads besides code: the model, and the committed records if there are."""
    return [*p.model.import_files(), p.model_files.import_json, *(p.tuning_files.database if p.tuning_files.exists()
                                                                  else ())]


def tune_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        if target.tune is None:
            continue
        p = _pair(pipeline, model, target)
        task = _pair_task(pipeline, TUNE, model, target,
                          "tuning records for the TVM kernels: the committed ones, or a MetaSchedule search",
                          _tune_reads(p), [*p.files.tune.database, p.files.tune.summary_json], CRT_FILES)
        # Settings of every stage a candidate passes through: it is built, linked and run like the pair.
        task["uptodate"] = [config_changed({"model": settings(model, "tune"), "versions": deps.versions(),
                                            "target": settings(target, "tune", "build", "link", "run")})]
        yield _cached(pipeline, "tune", task, target.toolchain.cc)


def retune_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        if target.tune is None:
            continue
        p = _pair(pipeline, model, target)
        yield {"name": p.name, "doc": "tune again and replace the committed records in tuning/<target>/<model>/",
               "actions": [_action(RETUNE, p)], "file_dep": _paths(*p.model.import_files()), "uptodate": [False],
               "verbosity": 2}


def relax_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f = p.files
        records = [*f.tune.database] if target.tune else []
        task = _pair_task(pipeline, BUILD, model, target,
                          "TVM build: lower with the Relax pipeline, compile the kernels, extract the plan",
                          [*model.import_files(), p.model_files.import_json, *records],
                          [f.kernels, f.plan_json, f.params_npz, f.modules_json, f.external_c])
        yield _cached(pipeline, "relax", task)


def classify_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        f = _pair(pipeline, model, target).files
        task = _pair_task(pipeline, CLASSIFY, model, target,
                          "classify every runtime module: registry, constants or refused",
                          [f.modules_json], [f.classification_json])
        yield _cached(pipeline, "classify", task)


def codegen_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f = p.files
        task = _pair_task(pipeline, CODEGEN, model, target,
                          "generate the metadata module (registry), executor.c, the weights and the model header",
                          [f.plan_json, f.params_npz, f.classification_json, p.model_files.import_json, model.source],
                          [*f.metadata, f.executor_c, f.weights_asm, f.weights_bin, f.header])
        yield _cached(pipeline, "codegen", task)


def link_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    from tasks.toolchain.link import link_inputs, link_targets

    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f = p.files
        task = _pair_task(pipeline, LINK, model, target,
                          "compile & link lib<model>.a and the test program with the target's toolchain",
                          [*link_inputs(f), f.header, p.model_files.import_json, f.plan_json, f.classification_json,
                           p.model_files.inputs_npz, model.source],
                          link_targets(f, target.board), CRT_FILES)
        yield _cached(pipeline, "link", task, target.toolchain.cc)


def run_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f = p.files
        yield _pair_task(pipeline, EXECUTE, model, target, "run the test program with the target's runner",
                         [f.program, p.model_files.import_json], [f.outputs_npz, f.run_log])


def compare_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        m = p.model_files
        yield _pair_task(pipeline, COMPARE, model, target, "compare outputs with the reference; write test.json",
                         [p.files.outputs_npz, m.reference_npz, m.reference_json, m.import_json],
                         [p.files.test_json])


def bisect_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f, m = p.files, p.model_files
        yield {"name": p.name, "doc": "run the pair with every kernel call's outputs traced and name the first one "
                                      "that differs from the reference (bisect.json)",
               "actions": [_action(BISECT, p)],
               "file_dep": _paths(f.program, f.library, f.executor_c, f.plan_json, m.inputs_npz, m.import_json,
                                  *model.import_files()) + list(deps.code_files(BISECT.module)) + CRT_FILES,
               "targets": _paths(f.bisect_json, f.bisect_program),
               "uptodate": [config_changed({"model": settings(model, "compare"), "versions": deps.versions(),
                                            "target": settings(target, "link", "run")})],
               "verbosity": 2, "clean": True}


# --- several models in one firmware (tasks/firmware.py) ----------------------------------------------------------

def _firmware(pipeline: Pipeline, config: FirmwareConfig, target: TargetConfig):
    from tasks.firmware import Firmware

    pairs = tuple(_pair(pipeline, pipeline.models[m], target) for m in config.models)
    return Firmware.at(PipelineFiles(pipeline.out), config, target, pairs)


def _firmware_uptodate(pipeline: Pipeline, config: FirmwareConfig, target: TargetConfig, *stages: str) -> list:
    models = {m: settings(pipeline.models[m], *stages) for m in config.models}
    return [config_changed({"firmware": settings(config, *stages), "models": models,
                            "target": settings(target, *stages), "versions": deps.versions()})]


def firmware_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    from tasks.firmware import firmware_inputs, firmware_targets

    for config, target in pipeline.firmware_builds():
        fw = _firmware(pipeline, config, target)
        yield {"name": fw.name, "doc": "link several models into one library and test program (shared arena)",
               "actions": [_action(FIRMWARE, fw)],
               "file_dep": _paths(*firmware_inputs(fw)) + list(deps.code_files(FIRMWARE.module)) + CRT_FILES,
               "targets": _paths(*firmware_targets(fw)),
               "uptodate": _firmware_uptodate(pipeline, config, target, "codegen", "link"), "clean": True}


def firmware_test_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for config, target in pipeline.firmware_builds():
        fw = _firmware(pipeline, config, target)
        f = fw.files
        reads = [f.program, f.sizes_json]
        for p in fw.pairs:
            reads += [p.files.plan_json, *p.model_files.reference_files, p.model_files.import_json]
        yield {"name": fw.name, "doc": "run a firmware's test program and compare each model with its reference",
               "actions": [_action(FIRMWARE_TEST, fw)],
               "file_dep": _paths(*reads) + list(deps.code_files(FIRMWARE_TEST.module)),
               "targets": _paths(f.run_log, f.test_json, *(t for p in fw.pairs for t in
                                                         (f.outputs_npz(p.model.name), f.model_test_json(p.model.name)))),
               "uptodate": _firmware_uptodate(pipeline, config, target, "run", "compare"), "clean": True}


# --- packages (tasks/package.py) ----------------------------------------------------------------------------------

def _package_task(name: str, doc: str, stage: Stage, arg: Any, target: TargetConfig, reads: list[Path],
                  writes: list[Path], revision: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "doc": doc, "actions": [_action(stage, arg)],
            "file_dep": _paths(*reads) + list(deps.code_files(stage.module)) + CRT_FILES, "targets": _paths(*writes),
            "uptodate": [config_changed({"target": settings(target, "link"), "revision": revision,
                                         "versions": deps.versions()})], "clean": True}


def package_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    """Per pair and per firmware: the install tree (CMake, pkg-config, manifest) and, per pair, the MLF tarball. The
    manifest names the crtforge commit, so a new commit repackages."""
    from tasks.package import crtforge_revision

    revision = crtforge_revision()
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f = p.files
        script = [f.linker_script] if target.board.kind == "bare-metal" else []
        yield _package_task(p.name, "the pair as a CMake/pkg-config package and a Model Library Format tarball",
                            PACKAGE, p, target,
                            [f.library, f.header, f.plan_json, f.sizes_json, f.params_npz, f.weights_bin, f.kernels,
                             *f.metadata, f.executor_c, f.external_c, f.weights_asm, p.model_files.import_json,
                             model.source, *script], [f.package_dir, f.mlf_tar], revision)
    for config, target in pipeline.firmware_builds():
        fw = _firmware(pipeline, config, target)
        f = fw.files
        script = [f.linker_script] if target.board.kind == "bare-metal" else []
        yield _package_task(fw.name, "a firmware as a CMake/pkg-config package", PACKAGE_FIRMWARE, fw, target,
                            [f.library, f.header, f.sizes_json, *(p.files.header for p in fw.pairs), *script],
                            [f.package_dir], revision)


def _name(model: ModelConfig, target: TargetConfig) -> str:
    return f"{target.name}/{model.name}"


def build_task(pipeline: Pipeline) -> dict[str, Any]:
    return {"doc": "build every (model, target) pair up to its linked program, and every firmware", "actions": None,
            "task_dep": [f"link:{_name(m, t)}" for m, t in pipeline.pairs()]
            + [f"firmware:{t.name}/{fw.name}" for fw, t in pipeline.firmware_builds()]}


def _rows(pipeline: Pipeline):
    """The results table's rows and the HTML report's: every pair, then every model of every firmware."""
    from tasks.report.html import ReportEntry
    from tasks.report.table import ResultFiles

    table, page = [], []
    for m, t in pipeline.pairs():
        f = _pair(pipeline, m, t).files
        table.append(ResultFiles.of_pair(t.name, m.name, f))
        page.append(ReportEntry(t.name, m.name, f.test_json, f.sizes_json, f.bench_json, f.program))
    for config, target in pipeline.firmware_builds():
        fw = _firmware(pipeline, config, target).files
        for p in _firmware(pipeline, config, target).pairs:
            label = f"{config.name}/{p.model.name}"
            table.append(ResultFiles(target.name, label, fw.model_test_json(p.model.name), fw.sizes_json,
                                     p.files.classification_json, p.files.plan_json))
            page.append(ReportEntry(target.name, label, fw.model_test_json(p.model.name), fw.sizes_json, None,
                                    fw.program))
    return table, page


def _write_html(pipeline: Pipeline, page: list) -> None:
    from tasks.report.html import write_report_html

    top = PipelineFiles(pipeline.out)
    summary = write_report_html(page, pipeline.file.name, top.conformance_json, top.report_html, top.report_json)
    grew = f"; {len(summary['grew'])} figures grew since the previous build" if summary["grew"] else ""
    print(f"wrote {top.report_html} ({summary['passed']}/{summary['pairs']} rows pass{grew})")


def _html_only(pipeline: Pipeline) -> None:
    _write_html(pipeline, _rows(pipeline)[1])


def _report(pipeline: Pipeline) -> TaskFailed | None:
    from tasks.report.table import write_report

    table, page = _rows(pipeline)
    text, failures = write_report(table, PipelineFiles(pipeline.out).results_md)
    print(text, end="")
    _write_html(pipeline, page)
    if failures:
        return TaskFailed("outputs differ from the reference:\n" + "\n".join(failures + _bisect_mismatches(pipeline)))
    return None


def _bisect_mismatches(pipeline: Pipeline) -> list[str]:
    """On a mismatch, the bisector's verdict for each pair that differs (bisect.json beside its test.json)."""
    from tasks.execute.bisect import bisect_pair

    lines = []
    for m, t in pipeline.pairs():
        p = _pair(pipeline, m, t)
        if not p.files.test_json.exists() or fsutil.read_json(p.files.test_json)["passed"]:
            continue
        try:
            lines.append(bisect_pair(p).summary())
        except CrtforgeError as e:
            lines.append(f"bisect {p.name}: could not bisect: {e}")
    return lines


def test_task(pipeline: Pipeline) -> dict[str, Any]:
    return {"doc": "run and compare every pair and firmware, print the results table (out/results.md), write "
                   "out/report.html",
            "actions": [(_report, (pipeline,), {})],
            "task_dep": [f"compare:{_name(m, t)}" for m, t in pipeline.pairs()]
            + [f"firmware_test:{t.name}/{fw.name}" for fw, t in pipeline.firmware_builds()], "verbosity": 2,
            "uptodate": [False]}


def report_task(pipeline: Pipeline) -> dict[str, Any]:
    """out/report.html from whatever the pairs have now (built, tested, benchmarked or not): never stale, since
    it always runs, and cheap."""
    return {"doc": "write out/report.html (also written by doit test): sizes, budgets, instructions, conformance, "
                   "what changed", "actions": [(_html_only, (pipeline,), {})],
            "task_dep": ["build"], "verbosity": 2, "uptodate": [False]}


# --- conformance sweep (tasks/conformance.py) ----------------------------------------------------------------

def _sweep_targets(pipeline: Pipeline) -> list[TargetConfig]:
    from tasks.conformance import TARGETS

    return [pipeline.targets[t] for t in TARGETS if t in pipeline.targets]


def conformance_tasks(pipeline: Pipeline, patterns: str) -> Iterator[dict[str, Any]]:
    """The sweep: TVM's VM and every target on each selected test, then the report. Created only when a
    conformance task runs (dodo.py delays it), so no other command reads the onnx package's test data."""
    from tasks import conformance

    out = PipelineFiles(pipeline.out / "conformance")
    node_tests = conformance.write_node_tests(PipelineFiles(pipeline.out).node_tests_dir)
    cases = conformance.discover((conformance.onnx_test_data(), node_tests),
                                 tuple(p.strip() for p in patterns.split(",") if p.strip()))
    every_stage = list(deps.code_files("tasks.conformance", *(s.module for s in PAIR_STAGES)))
    vm_files, results = [], []
    for case in cases:
        files = out.model(case.name)
        vm_files.append(files.vm_json)
        yield {"basename": "sweep-vm", "name": case.name, "doc": "TVM's own Relax VM on one ONNX test (the bar)",
               "actions": [(conformance.run_vm, (case, files), {})],
               "file_dep": _paths(*case.files()) + list(deps.code_files("tasks.conformance")),
               # vm.json always; the import and reference files only when TVM imports the test (the sweep reads
               # vm.json to tell), so they are not targets: a missing one would rerun the task forever.
               "targets": _paths(files.vm_json),
               "uptodate": [config_changed({"versions": deps.versions()})], "clean": True}
        for target in _sweep_targets(pipeline):
            if not conformance.runs_on(case, target.name):
                continue
            p = Pair.at(out, case.model(), target, pipeline.file)
            results.append(p.files.result_json)
            yield {"basename": "sweep", "name": p.name,
                   "doc": "one ONNX test through every stage on one target; records the outcome",
                   "actions": [(conformance.run_case, (case, target, out, pipeline.file), {})],
                   "file_dep": _paths(*case.files(), files.vm_json) + every_stage + CRT_FILES,
                   "targets": _paths(p.files.result_json),
                   "uptodate": [config_changed({"target": settings(target, *(s.name for s in PAIR_STAGES)),
                                                "versions": deps.versions()})],
                   "clean": True}

    top = PipelineFiles(pipeline.out)
    yield {"basename": "conformance", "doc": "sweep the onnx package's model and node tests (conformance=GLOBS)",
           "actions": [(_conformance_report, (vm_files, results, top.conformance_md, top.conformance_json), {})],
           "file_dep": _paths(*vm_files, *results) + list(deps.code_files("tasks.conformance")),
           "targets": _paths(top.conformance_md, top.conformance_json), "verbosity": 2, "clean": True}


def _conformance_report(vm_files: list[Path], results: list[Path], md: Path, js: Path) -> None:
    """The sweep's report and its totals per target (a module function: `doit -n N` pickles task actions)."""
    from tasks import conformance

    totals = conformance.write_report(vm_files, results, md, js)
    for target, t in totals.items():
        rate = "n/a" if t["pass_rate_of_vm_ok"] is None else f"{100 * t['pass_rate_of_vm_ok']:.1f}%"
        print(f"{target}: {t['passed']}/{t['tests']} passed; {t['passed_of_vm_ok']}/{t['vm_ok']} of the tests "
              f"TVM's VM runs correctly ({rate}); failures by stage {t['failed_by_stage']}")


def delayed_creator(*basenames: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """A task creator that doit runs only when one of `basenames` is asked for (create_after), not at every
    load: `doit build` never reads the conformance cases."""
    return create_after(executed=None, creates=list(basenames))


# --- benchmarks (tasks/bench/measure.py) -------------------------------------------------------------------------

def bench_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    from tasks.bench import measure as bench
    from tasks.bench.qemu_insns import PLUGIN_SOURCE, build_plugin

    top = PipelineFiles(pipeline.out)
    plugin = top.insns_plugin
    yield {"basename": "bench-plugin", "doc": "build the qemu TCG plugin that counts instructions",
           "actions": [_action(build_plugin, top.bench_dir)],
           "file_dep": _paths(*sorted(PLUGIN_SOURCE.parent.glob("*"))), "targets": _paths(plugin), "clean": True}
    reports = []
    for model, target in pipeline.pairs():
        p = _pair(pipeline, model, target)
        f = p.files
        timing = ([f.timing_c, f.timing_object, f.timing_program] if target.runner == "native"
                  else [f.profile_object, f.profile_program, f.profile_json])
        reports.append(f.bench_json)
        yield {"basename": "bench-pair", "name": p.name,
               "doc": "instructions per inference, sizes split, arena against its lower bound (and wall time on the host)",
               "actions": [_action(bench.bench_pair, p, plugin)],
               "file_dep": _paths(f.program, f.plan_json, f.sizes_json, p.model_files.import_json,
                                  f.classification_json, f.library, p.model_files.inputs_npz, plugin, f.executor_c,
                                  *([f.tune.summary_json] if target.tune else []))
               + list(deps.code_files("tasks.bench.measure", "tasks.bench.profile")) + CRT_FILES,
               "targets": _paths(f.bench_json, *timing), "uptodate": _uptodate("bench", model, target),
               "clean": True}
    peers = {}
    for model, target in pipeline.pairs():
        # One peer measurement per model that some target runs natively (the report picks our fastest of them).
        if target.runner != "native" or model.name in peers:
            continue
        p = _pair(pipeline, model, target)
        peer = "onnxruntime" if model.source.suffix == ".onnx" else "tflm"
        peers[model.name] = top.peer_json(peer, model.name)
        action = ((bench.peer_onnxruntime, p.model.source, p.model_files) if peer == "onnxruntime"
                  else (bench.peer_tflm, p.model.source, p.model_files, top.peers_dir))
        yield {"basename": "bench-peer", "name": f"{peer}/{model.name}",
               "doc": "the peer on the same model and inputs: onnxruntime's wall time, or TFLM's instructions",
               "actions": [_action(_write_peer, peers[model.name], *action)],
               "file_dep": _paths(*model.import_files(), p.model_files.inputs_npz, p.model_files.reference_json)
               + list(deps.code_files("tasks.bench.measure")),
               "targets": _paths(peers[model.name]), "uptodate": [config_changed({"versions": deps.versions()})],
               "clean": True}

    def write_report() -> None:
        results = [fsutil.read_json(r) for r in reports]
        peer_results = {m: fsutil.read_json(path) for m, path in peers.items()}
        bench.report(results, peer_results, top.bench_json, top.bench_md, top.bench_dir)
        for c in fsutil.read_json(top.bench_json)["peers"]:
            print(f"{c['model']}: crtforge ({c['target']}) / {c['peer']} = {c['ratio']:.3f} ({c['measure']})")
        print(f"wrote {top.bench_md}")

    targets_in_order = list(dict.fromkeys(t.name for _, t in pipeline.pairs()))
    yield {"basename": "bench", "doc": "benchmarks of every pair and peer: out/bench.md, out/bench.json, plots",
           "actions": [write_report],
           "file_dep": _paths(*reports, *peers.values()) + list(deps.code_files("tasks.bench.measure")),
           "targets": _paths(top.bench_json, top.bench_md, *(top.plot(t) for t in targets_in_order)),
           "verbosity": 2, "clean": True}


def _write_peer(path: Path, func: Callable[..., dict[str, Any]], *args: Any) -> None:
    fsutil.write_json(path, func(*args))
