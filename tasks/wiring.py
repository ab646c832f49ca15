"""doit wiring: the task creators for every stage. They only describe tasks; actions call the stages.

One subtask per (model, target), named `<target>/<model>`, writing under `out/<target>/<model>/`.
Each declares the files it reads (including its own stage modules), every file it writes, and
`config_changed` on exactly the settings it reads, so doit reruns what changed and nothing else.
"""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from tasks import fsutil
from tasks import pair as stages
from tasks.config import PROJECT_ROOT, ConfigError, ModelConfig, Pipeline, TargetConfig, load_pipeline
from tasks.pair import Pair, reference_dir, tvm_version

TASKS_DIR = Path(__file__).resolve().parent
TEMPLATES = TASKS_DIR / "templates"
CRT_FILES = sorted(str(p) for p in (PROJECT_ROOT / "crt").rglob("*") if p.suffix in (".c", ".h", ".j2"))


def _stage(*modules: str) -> list[str]:
    """The stage modules a task runs, and pair.py, whose actions call them."""
    return [str(TASKS_DIR / f"{m}.py") for m in ("pair", *modules)]


def _action(func: Callable[..., Any], *args: Any) -> tuple[Callable[[], Any], tuple, dict]:
    """A doit python-action that turns a stage's error into a TaskFailed with its message (no traceback)."""

    def run() -> Any:
        try:
            func(*args)
        except stages.user_errors() as e:
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


def lock(pipeline: Pipeline) -> TextIO:
    """Hold the pipeline's lock for the life of this process: a second doit on the same pipeline waits for the
    first (two writers would race on the same outputs and on the dependency database). The caller keeps the
    returned file open; the lock goes with the process, even a killed one."""
    path = pipeline.file.with_name(f".{pipeline.file.stem}.doit.lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"crtforge: another doit is running on {pipeline.file.name} (lock {path.name}); waiting for it",
              file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def doit_config(pipeline: Pipeline) -> dict[str, Any]:
    # The dependency database sits beside the pipeline file (whose folder exists), one per pipeline file.
    dep_file = pipeline.file.with_name(f".{pipeline.file.stem}.doit.db")
    return {"default_tasks": ["build"], "dep_file": str(dep_file), "backend": "sqlite3", "verbosity": 1}


def pair(pipeline: Pipeline, model: ModelConfig, target: TargetConfig) -> Pair:
    return Pair.at(pipeline.out, model, target, pipeline.file)


def _model_files(model: ModelConfig) -> list[str]:
    files = [model.source]
    if model.inputs:
        files.append(model.inputs)
    if model.expected:
        files.extend(sorted(model.expected.rglob("*.pb")) if model.expected.is_dir() else [model.expected])
    return [str(f) for f in files]


def _report(pipeline: Pipeline) -> TaskFailed | None:
    from tasks.report import write_report

    pairs = [(t.name, m.name, pair(pipeline, m, t).files.dir) for m, t in pipeline.pairs()]
    text, failures = write_report(pairs, pipeline.out / "results.md")
    print(text, end="")
    if failures:
        return TaskFailed("outputs differ from the reference:\n" + "\n".join(failures))
    return None


# --- task generators -------------------------------------------------------------------------------------

def _name(model: ModelConfig, target: TargetConfig) -> str:
    return f"{target.name}/{model.name}"


def _paths(*paths: Path) -> list[str]:
    return [str(p) for p in paths]


def reference_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    used = {m.name for m, _ in pipeline.pairs()}
    for model in pipeline.models.values():
        if model.name not in used:
            continue
        out = reference_dir(pipeline.out, model)
        yield {"name": model.name, "doc": "inputs and reference outputs of a model (expected, or TVM's Relax VM)",
               "actions": [_action(stages.reference, model, out)],
               "file_dep": _model_files(model) + _stage("reference", "importer", "fsutil", "naming"),
               "targets": _paths(*(out / n for n in ("inputs.npz", "reference.npz", "reference.json"))),
               "uptodate": [config_changed({"model": model.settings(), "tvm": tvm_version()})], "clean": True}


def import_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        yield {"name": _name(model, target), "doc": "import the model (ONNX/TFLite) into Relax; record its signature",
               "actions": [_action(stages.import_model, p)],
               "file_dep": [str(model.source)] + _stage("importer", "fsutil", "naming"),
               "targets": _paths(p.files.import_json),
               "uptodate": [config_changed({"source": str(model.source), "tvm": tvm_version()})], "clean": True}


def relax_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        f = p.files
        yield {"name": _name(model, target),
               "doc": "TVM build: lower with the Relax pipeline, compile the kernels, extract the plan",
               "actions": [_action(stages.build, p)],
               "file_dep": _paths(model.source, f.import_json)
               + _stage("relax_build", "plan", "importer", "classify", "offload", "fsutil", "naming")
               + [str(TEMPLATES / "offload_dense.c.j2")],
               "targets": _paths(f.kernels, f.plan_json, f.params_npz, f.modules_json,
                                 *([f.external_c] if target.offload else [])),
               "uptodate": [config_changed({"prefix": model.prefix, "target": target.name,
                                            "tvm_target": target.tvm_target(), "offload": list(target.offload),
                                            "profile": target.profile, "tvm": tvm_version()})],
               "clean": True}


def classify_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        yield {"name": _name(model, target), "doc": "classify every runtime module: registry, constants or refused",
               "actions": [_action(stages.classify, p)],
               "file_dep": _paths(p.files.modules_json) + _stage("classify", "fsutil"),
               "targets": _paths(p.files.classification_json), "clean": True}


def codegen_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        f = p.files
        yield {"name": _name(model, target), "doc": "generate metadata.c (registry), executor.c and the model header",
               "actions": [_action(stages.codegen, p)],
               "file_dep": _paths(f.plan_json, f.params_npz, f.classification_json, f.import_json, model.source)
               + _stage("codegen", "plan", "classify", "importer", "fsutil")
               + [str(TEMPLATES / t) for t in ("metadata.c.j2", "metadata.ll.j2", "executor.c.j2", "model.h.j2")],
               "targets": _paths(*f.metadata, f.executor_c, f.header),
               "uptodate": [config_changed({"model": model.name, "prefix": model.prefix, "target": target.name,
                                            "tvm_target": target.tvm_target(), "tvm": tvm_version()})],
               "clean": True}


def link_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    from tasks.link import link_sources, link_targets

    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        f = p.files
        offload = bool(target.offload)
        yield {"name": _name(model, target),
               "doc": "compile & link lib<model>.a and the test program with the target's toolchain",
               "actions": [_action(stages.link, p)],
               "file_dep": _paths(*link_sources(f.dir, target.backend, offload), f.header, f.import_json, f.plan_json,
                                  f.classification_json, p.inputs_npz, target.toolchain.file, target.board.file)
               + CRT_FILES + _stage("link", "codegen", "fsutil") + [str(TEMPLATES / "harness.c.j2")],
               "targets": _paths(*link_targets(f.dir, model.prefix, target.backend, target.board, offload)),
               "uptodate": [config_changed({"toolchain": target.toolchain.settings(), "board": target.board.settings(),
                                            "model": model.name, "target": target.name, "backend": target.backend,
                                            "offload": list(target.offload), "profile": target.profile})],
               "clean": True}


def run_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        f = p.files
        yield {"name": _name(model, target), "doc": "run the test program with the target's runner",
               "actions": [_action(stages.execute, p)],
               "file_dep": _paths(f.program, f.import_json, target.board.file) + _stage("run", "fsutil"),
               "targets": _paths(f.outputs_npz, f.run_log),
               "uptodate": [config_changed({"board": target.board.settings(), "timeout": target.timeout})],
               "clean": True}


def compare_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        f, ref = p.files, p.reference_dir
        yield {"name": _name(model, target), "doc": "compare outputs with the reference; write test.json",
               "actions": [_action(stages.compare, p)],
               "file_dep": _paths(f.outputs_npz, ref / "reference.npz", ref / "reference.json", f.sizes_json,
                                  f.import_json) + _stage("compare", "fsutil"),
               "targets": _paths(f.test_json),
               "uptodate": [config_changed({"rtol": model.rtol, "atol": model.atol})], "clean": True}


def build_task(pipeline: Pipeline) -> dict[str, Any]:
    return {"doc": "build every (model, target) pair up to its linked program", "actions": None,
            "task_dep": [f"link:{_name(m, t)}" for m, t in pipeline.pairs()]}


def test_task(pipeline: Pipeline) -> dict[str, Any]:
    return {"doc": "run and compare every pair, then print the results table (out/results.md)",
            "actions": [(_report, (pipeline,), {})],
            "task_dep": [f"compare:{_name(m, t)}" for m, t in pipeline.pairs()], "verbosity": 2,
            "uptodate": [False]}


# --- conformance sweep (tasks/conformance.py) ----------------------------------------------------------------

def _sweep_out(pipeline: Pipeline) -> Path:
    return pipeline.out / "conformance"


def conformance_cases(patterns: str) -> list:
    """The onnx package's model tests whose case names match `patterns` (comma-separated globs)."""
    from tasks.conformance import discover, onnx_test_data

    try:
        return discover(onnx_test_data(), tuple(p.strip() for p in patterns.split(",") if p.strip()))
    except FileNotFoundError:
        return []  # onnx not installed yet: `doit list` still works


def _sweep_targets(pipeline: Pipeline) -> list[TargetConfig]:
    from tasks.conformance import TARGETS

    return [pipeline.targets[t] for t in TARGETS if t in pipeline.targets]


def sweep_tasks(pipeline: Pipeline, cases: list) -> Iterator[dict[str, Any]]:
    from tasks import conformance

    out = _sweep_out(pipeline)
    every_stage = _stage("conformance", "importer", "reference", "relax_build", "plan", "classify", "offload",
                         "codegen", "link", "run", "compare", "fsutil", "naming")
    templates = [str(p) for p in sorted(TEMPLATES.glob("*.j2"))]
    for case in cases:
        ref = out / "_models" / case.name
        yield {"basename": "sweep-vm", "name": case.name, "doc": "TVM's own Relax VM on one ONNX test (the bar)",
               "actions": [(conformance.run_vm, (case, ref), {})],
               "file_dep": _paths(*case.files()) + _stage("conformance", "importer", "reference", "compare"),
               "targets": _paths(ref / "vm.json"), "uptodate": [config_changed({"tvm": tvm_version()})],
               "clean": True}
        for target in _sweep_targets(pipeline):
            if not conformance.runs_on(case, target.name):
                continue
            yield {"basename": "sweep", "name": f"{target.name}/{case.name}",
                   "doc": "one ONNX test through every stage on one target; records the outcome",
                   "actions": [(conformance.run_case, (case, target, out, pipeline.file), {})],
                   "file_dep": _paths(*case.files(), ref / "vm.json", target.toolchain.file, target.board.file)
                   + every_stage + templates + CRT_FILES,
                   "targets": _paths(out / target.name / case.name / "result.json"),
                   "uptodate": [config_changed({"target": target.settings(), "tvm": tvm_version()})],
                   "clean": True}


def conformance_task(pipeline: Pipeline, cases: list) -> dict[str, Any]:
    from tasks import conformance

    out = _sweep_out(pipeline)
    vm_files = [out / "_models" / c.name / "vm.json" for c in cases]
    results = [out / t.name / c.name / "result.json" for c in cases for t in _sweep_targets(pipeline)
               if conformance.runs_on(c, t.name)]

    def report() -> None:
        totals = conformance.write_report(vm_files, results, pipeline.out / "conformance.md",
                                          pipeline.out / "conformance.json")
        for target, t in totals.items():
            rate = "n/a" if t["pass_rate_of_vm_ok"] is None else f"{100 * t['pass_rate_of_vm_ok']:.1f}%"
            print(f"{target}: {t['passed']}/{t['tests']} passed; {t['passed_of_vm_ok']}/{t['vm_ok']} of the tests "
                  f"TVM's VM runs correctly ({rate}); failures by stage {t['failed_by_stage']}")

    return {"doc": "sweep the onnx package's model tests (conformance=GLOBS selects); out/conformance.md",
            "actions": [report], "file_dep": _paths(*vm_files, *results) + _stage("conformance"),
            "targets": _paths(pipeline.out / "conformance.md", pipeline.out / "conformance.json"),
            "verbosity": 2, "clean": True}


# --- benchmarks (tasks/bench.py) ----------------------------------------------------------------------------------

HOST_TARGET = "host"  # the peers are compared with this target's builds


def bench_tasks(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    from tasks import bench
    from tasks.qemu_insns import PLUGIN_SOURCE, build_plugin

    out = pipeline.out / "bench"
    plugin = out / "crtforge_insns.so"
    yield {"basename": "bench-plugin", "doc": "build the qemu TCG plugin that counts instructions",
           "actions": [_action(build_plugin, out)], "file_dep": _paths(*sorted(PLUGIN_SOURCE.parent.glob("*"))),
           "targets": _paths(plugin), "clean": True}
    reports = []
    for model, target in pipeline.pairs():
        p = pair(pipeline, model, target)
        f = p.files
        timing = [f.dir / "timing.c", f.dir / "obj" / "timing.o", f.dir / "timing.elf"] if target.runner == "native" \
            else []
        reports.append(f.dir / "bench.json")
        yield {"basename": "bench-pair", "name": _name(model, target),
               "doc": "instructions per inference, sizes split, arena against its lower bound (and wall time on the host)",
               "actions": [_action(bench.bench_pair, p, plugin)],
               "file_dep": _paths(f.program, f.plan_json, f.sizes_json, f.import_json, f.classification_json,
                                  f.dir / f"lib{model.prefix}.a", p.inputs_npz, plugin, target.board.file)
               + _stage("bench", "qemu_insns", "link", "run", "fsutil") + [str(TEMPLATES / "timing.c.j2")],
               "targets": _paths(f.dir / "bench.json", *timing), "clean": True}
    peers = {}
    for model, target in pipeline.pairs():
        if target.name != HOST_TARGET or model.name in peers:
            continue
        p = pair(pipeline, model, target)
        peer = "onnxruntime" if model.source.suffix == ".onnx" else "tflm"
        peers[model.name] = out / "peers" / f"{peer}-{model.name}.json"
        action = ((bench.peer_onnxruntime, p.model.source, p.reference_dir) if peer == "onnxruntime"
                  else (bench.peer_tflm, p.model.source, p.reference_dir, out / "peers"))
        yield {"basename": "bench-peer", "name": f"{peer}/{model.name}",
               "doc": "the peer on the same model and inputs: onnxruntime's wall time, or TFLM's instructions",
               "actions": [_action(_write_peer, peers[model.name], *action)],
               "file_dep": _paths(model.source, p.inputs_npz, p.reference_dir / "reference.json")
               + _stage("bench", "fsutil"),
               "targets": _paths(peers[model.name]), "clean": True}

    def write_report() -> None:
        results = [fsutil.read_json(r) for r in reports]
        peer_results = {m: fsutil.read_json(path) for m, path in peers.items()}
        bench.report(results, peer_results, HOST_TARGET, pipeline.out / "bench.json", pipeline.out / "bench.md", out)
        for c in fsutil.read_json(pipeline.out / "bench.json")["peers"]:
            print(f"{c['model']}: crtforge / {c['peer']} = {c['ratio']:.3f} ({c['measure']})")
        print(f"wrote {pipeline.out / 'bench.md'}")

    targets_in_order = list(dict.fromkeys(t.name for _, t in pipeline.pairs()))
    yield {"basename": "bench", "doc": "benchmarks of every pair and peer: out/bench.md, out/bench.json, plots",
           "actions": [write_report], "file_dep": _paths(*reports, *peers.values()) + _stage("bench"),
           "targets": _paths(pipeline.out / "bench.json", pipeline.out / "bench.md",
                             *(out / f"{t}.png" for t in targets_in_order)),
           "verbosity": 2, "clean": True}


def _write_peer(path: Path, func: Callable[..., dict[str, Any]], *args: Any) -> None:
    fsutil.write_json(path, func(*args))
