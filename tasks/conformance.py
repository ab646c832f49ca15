"""Conformance sweep: the onnx package's model tests and node tests (one op each), through the normal pipeline.

Every test with a `model.onnx` and a `test_data_set_0` becomes a model (its own inputs, its expected
outputs) built and run on a few of the pipeline's targets by the same stage actions as `doit build`
(tasks/pair.py). A pair's outcome is recorded, not raised, so one failure never stops the sweep and
doit caches failures like successes. TVM's own Relax VM runs every test too: that is the bar.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import fsutil
from tasks.config import ModelConfig, TargetConfig
from tasks.naming import c_identifier
from tasks.layout import ModelFiles, PipelineFiles
from tasks.pair import PAIR_STAGES, Pair

SUITES = {"pytorch-converted": "pc", "pytorch-operator": "po", "simple": "simple", "node": "node"}
# The onnx wheel ships the first three as data; the node tests (one op each) only as code, written out by
# write_node_tests.
# The pipeline's targets the sweep runs on; the emulated one runs EMULATED_SUITES only, to bound time.
TARGETS = ("host", "host-llvm", "cortex-m4")
EMULATED = "cortex-m4"
EMULATED_SUITES = ("pytorch-converted",)
# The onnx backend tests' own tolerances (onnx.backend.test.case: rtol 1e-3, atol 1e-7), atol relaxed for
# float32 kernels that sum in another order.
RTOL, ATOL = 1e-3, 1e-5


@dataclass(frozen=True)
class Case:
    suite: str
    test: str  # the test's folder, e.g. test_Conv2d
    dir: Path

    @property
    def name(self) -> str:
        return f"{SUITES[self.suite]}_{self.test.removeprefix('test_')}"

    def model(self) -> ModelConfig:
        return ModelConfig(name=self.name, prefix=c_identifier(self.name), source=self.dir / "model.onnx",
                           inputs=None, expected=self.dir / "test_data_set_0", rtol=RTOL, atol=ATOL)

    def files(self) -> list[Path]:
        return [self.dir / "model.onnx", *sorted((self.dir / "test_data_set_0").glob("*.pb"))]


def onnx_test_data() -> Path:
    """onnx/backend/test/data of the installed onnx package, found without importing it."""
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the onnx package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "backend" / "test" / "data"


def write_node_tests(dest: Path) -> Path:
    """The onnx package's node tests (onnx.backend.test.case.node) as test folders like the other suites', under
    dest/<onnx version>/node/: the wheel has their code but not their data. Only tests whose inputs and outputs
    are all tensors (1,855 of 1,884 with onnx 1.23). Written once per onnx version, into a temporary folder that
    is renamed into place, so a half-written set is never read. Returns the folder to discover from."""
    import warnings

    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    root = dest / onnx.__version__
    if (root / "node").is_dir():
        return root
    tmp = root / f".node.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cases compute their expected outputs with numpy: overflows, log(0)
        cases = node.collect_testcases()
    for case in cases:
        graph = case.model.graph
        if not all(v.type.HasField("tensor_type") for v in (*graph.input, *graph.output)):
            continue
        inputs, outputs = case.data_sets[0]
        data = tmp / case.name / "test_data_set_0"
        data.mkdir(parents=True)
        (tmp / case.name / "model.onnx").write_bytes(case.model.SerializeToString())
        for kind, values, specs in (("input", inputs, graph.input), ("output", outputs, graph.output)):
            for j, (value, spec) in enumerate(zip(values, specs)):
                tensor = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(value, spec.name)
                (data / f"{kind}_{j}.pb").write_bytes(tensor.SerializeToString())
    tmp.rename(root / "node")
    return root


def discover(data: Path | tuple[Path, ...], patterns: tuple[str, ...] = ("*",)) -> list[Case]:
    """Every test with a model and a first data set, in a stable order; `patterns` filter case names. `data`:
    one or more folders holding suites (the onnx package's, write_node_tests')."""
    cases = []
    for suite, root in ((s, r) for r in (data if isinstance(data, tuple) else (data,)) for s in SUITES):
        for d in sorted((root / suite).iterdir()) if (root / suite).is_dir() else []:
            if (d / "model.onnx").is_file() and (d / "test_data_set_0").is_dir():
                case = Case(suite, d.name, d)
                if any(fnmatch.fnmatch(case.name, p) for p in patterns):
                    cases.append(case)
    return cases


def runs_on(case: Case, target: str) -> bool:
    return target != EMULATED or case.suite in EMULATED_SUITES


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _raised_in_tvm(e: BaseException) -> bool:
    """TVM's errors are often plain ValueErrors: what tells is where the deepest frame is — TVM's Python
    package, tvm_ffi, or TVM's C++ sources (frames that tvm_ffi adds to the traceback)."""
    tb = traceback.extract_tb(e.__traceback__)
    deepest = tb[-1].filename if tb else ""
    return (type(e).__module__.startswith(("tvm", "tvm_ffi")) or "/tvm/" in deepest or "tvm_ffi" in deepest
            or deepest.endswith((".cc", ".h")))


def is_upstream(e: BaseException) -> bool:
    """Whether the error was raised inside TVM (its frontends, passes or codegen), through any `from` chain."""
    seen: BaseException | None = e
    while seen is not None:
        if _raised_in_tvm(seen):
            return True
        seen = seen.__cause__
    return False


# --- per test: TVM's Relax VM, and the reference files --------------------------------------------------

def run_vm(case: Case, files: ModelFiles) -> dict[str, Any]:
    """Write the test's import.json, inputs and expected outputs for the pipeline, and check TVM's own Relax VM
    (LLVM, host) against them: vm.json says whether TVM itself runs the test correctly."""
    import numpy as np

    from tasks.execute.compare import compare_one
    from tasks.frontend.importer import load_relax, write_import
    from tasks.frontend.reference import expected_outputs, make_inputs, vm_outputs, write_reference

    model = case.model()
    result: dict[str, Any] = {"case": case.name, "ok": False, "error": None, "max_abs_error": None}
    try:
        mod = load_relax(model.source)
        sig = write_import(mod, model.source, files.import_json)
        inputs = make_inputs(model.name, sig, None, model.expected)
        expected = expected_outputs(sig, model.expected)
        write_reference(files, sig, inputs, expected, f"expected ({model.expected.name})")
        actual = vm_outputs(mod, sig, inputs)
        checks = [compare_one(np.asarray(actual[s.c_name]), expected[s.c_name], RTOL, ATOL) for s in sig.outputs]
        result["ok"] = all(c["passed"] for c in checks)
        result["max_abs_error"] = max((c["max_abs_error"] or 0.0) for c in checks)
        if not result["ok"]:
            result["error"] = "TVM's VM output differs from the expected output"
    except Exception as e:  # every failure is a result here: TVM raises many kinds
        result["error"] = first_line(e)
    fsutil.write_json(files.vm_json, result)
    return result


# --- per (test, target): the pipeline's stages ----------------------------------------------------------------

def run_case(case: Case, target: TargetConfig, out: PipelineFiles, pipeline_file: Path) -> dict[str, Any]:
    """Run every stage of the pair; record passed, or the stage that failed and its first error line."""
    pair = Pair.at(out, case.model(), target, pipeline_file)
    result: dict[str, Any] = {"case": case.name, "suite": case.suite, "test": case.test, "target": target.name,
                              "status": None, "error": None, "upstream": False, "max_abs_error": None}
    if not pair.model_files.reference_json.exists():
        vm = fsutil.read_json(pair.model_files.vm_json)
        result.update(status="import", error=vm["error"], upstream=True)
    else:
        for stage in PAIR_STAGES:
            try:
                stage(pair)
            except Exception as e:  # one failure never stops the sweep
                result.update(status=stage.name, error=first_line(e), upstream=is_upstream(e))
                break
        else:
            test = fsutil.read_json(pair.files.test_json)
            result.update(status="passed" if test["passed"] else "mismatch", max_abs_error=test["max_abs_error"])
            if not test["passed"]:
                worst = next(iter(o for o in test["outputs"].values() if not o["passed"]))
                result["error"] = (f"max abs error {test['max_abs_error']:.3g} ({worst.get('mismatched', '?')} of "
                                   f"{worst.get('elements', '?')} elements outside rtol {RTOL}, atol {ATOL})")
    fsutil.write_json(pair.files.result_json, result)
    return result


# --- the report --------------------------------------------------------------------------------------------------

def summarize(vm: dict[str, dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals per target: passed, failures per stage, and the pass rate over the tests TVM's VM gets right."""
    totals: dict[str, Any] = {}
    for target in sorted({r["target"] for r in results}, key=lambda t: TARGETS.index(t) if t in TARGETS else 99):
        rows = [r for r in results if r["target"] == target]
        bar = [r for r in rows if vm[r["case"]]["ok"]]
        stages: dict[str, int] = {}
        for r in rows:
            if r["status"] != "passed":
                stages[r["status"]] = stages.get(r["status"], 0) + 1
        passed_bar = sum(r["status"] == "passed" for r in bar)
        totals[target] = {"tests": len(rows), "passed": sum(r["status"] == "passed" for r in rows),
                          "vm_ok": len(bar), "passed_of_vm_ok": passed_bar,
                          "pass_rate_of_vm_ok": round(passed_bar / len(bar), 4) if bar else None,
                          "failed_by_stage": dict(sorted(stages.items())),
                          "upstream_failures": sum(r["status"] != "passed" and r["upstream"] for r in rows)}
    return totals


def report_markdown(vm: dict[str, dict[str, Any]], results: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    lines = ["# Conformance: the onnx package's model tests through crtforge", "",
             f"Suites: {', '.join(SUITES)}; test_data_set_0 of each; rtol {RTOL}, atol {ATOL}. "
             f"`{EMULATED}` (emulated) runs the {', '.join(EMULATED_SUITES)} suite only. "
             "The bar is the tests TVM's own Relax VM (LLVM, host) runs correctly.", "",
             "| target | tests | passed | TVM VM ok | passed of VM ok | rate | failures by stage | upstream |",
             "|---|---|---|---|---|---|---|---|"]
    for target, t in totals.items():
        rate = "n/a" if t["pass_rate_of_vm_ok"] is None else f"{100 * t['pass_rate_of_vm_ok']:.1f}%"
        stages = ", ".join(f"{k} {v}" for k, v in t["failed_by_stage"].items()) or "none"
        lines.append(f"| {target} | {t['tests']} | {t['passed']} | {t['vm_ok']} | {t['passed_of_vm_ok']} | {rate} | "
                     f"{stages} | {t['upstream_failures']} |")
    targets = list(totals)
    lines += ["", "| test | TVM VM | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["target"]] = r
    for case in sorted(by_case):
        cells = []
        for target in targets:
            r = by_case[case].get(target)
            if r is None:
                cells.append("–")
            elif r["status"] == "passed":
                cells.append("pass")
            else:
                tag = " (upstream)" if r["upstream"] else ""
                cells.append(f"**{r['status']}**{tag}: {_cell(r['error'])}")
        v = vm[case]
        lines.append(f"| {case} | {'ok' if v['ok'] else 'FAIL: ' + _cell(v['error'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:160]


def write_report(vm_files: list[Path], result_files: list[Path], out_md: Path, out_json: Path) -> dict[str, Any]:
    vm = {v["case"]: v for v in (fsutil.read_json(p) for p in vm_files)}
    results = [fsutil.read_json(p) for p in result_files]
    totals = summarize(vm, results)
    fsutil.write_json(out_json, {"totals": totals, "vm": vm, "results": results})
    fsutil.write_text(out_md, report_markdown(vm, results, totals))
    return totals
