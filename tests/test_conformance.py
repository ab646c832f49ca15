"""The conformance sweep: discovery, recorded outcomes, the report, and caching through doit."""

from __future__ import annotations

import pytest

from conftest import run_doit
from tasks import fsutil
from tasks.conformance import (Case, discover, is_upstream, onnx_test_data, report_markdown, summarize,
                               write_node_tests)

SUBSET = ("pc_ReLU,pc_Conv2d_depthwise_padded,simple_sequence_model7,simple_strnorm_model_monday_empty_output,"
          "node_relu")


def test_discovery_finds_every_onnx_model_test():
    cases = discover(onnx_test_data())
    names = [c.name for c in cases]
    assert len(names) == len(set(names)) >= 130
    assert {"pytorch-converted", "pytorch-operator", "simple"} == {c.suite for c in cases}
    assert all((c.dir / "model.onnx").is_file() for c in cases)


def test_node_tests_are_written_once_as_test_folders(tmp_path):
    root = write_node_tests(tmp_path)
    cases = discover(root)
    assert len(cases) >= 1500 and {c.suite for c in cases} == {"node"}
    relu = next(c for c in cases if c.name == "node_relu")
    assert [p.name for p in relu.files()] == ["model.onnx", "input_0.pb", "output_0.pb"]
    stamp = (root / "node").stat().st_mtime_ns
    assert write_node_tests(tmp_path) == root and (root / "node").stat().st_mtime_ns == stamp  # not rewritten
    assert not list(root.glob(".node.*"))  # no temporary folder left behind


def test_globs_select_cases():
    assert [c.name for c in discover(onnx_test_data(), ("pc_Conv2d", "simple_sequence_model7"))] == [
        "pc_Conv2d", "simple_sequence_model7"]


def test_errors_raised_inside_tvm_are_upstream():
    import tvm

    try:
        tvm.target.Target({"kind": "no-such-kind"})
    except Exception as e:  # TVM's own error type
        tvm_error = e
    assert is_upstream(tvm_error)
    try:
        raise ValueError("ours") from tvm_error
    except ValueError as e:
        assert is_upstream(e)
    assert not is_upstream(RuntimeError("ours alone"))


def test_summary_counts_the_bar_and_the_stages():
    vm = {"a": {"ok": True}, "b": {"ok": True}, "c": {"ok": False, "error": "TVM fails"}}
    results = [{"case": "a", "target": "host", "status": "passed", "upstream": False, "error": None},
               {"case": "b", "target": "host", "status": "link", "upstream": False, "error": "compiling x"},
               {"case": "c", "target": "host", "status": "import", "upstream": True, "error": "TVM fails"}]
    totals = summarize(vm, results)["host"]
    assert totals == {"tests": 3, "passed": 1, "vm_ok": 2, "passed_of_vm_ok": 1, "pass_rate_of_vm_ok": 0.5,
                      "failed_by_stage": {"import": 1, "link": 1}, "upstream_failures": 1}
    md = report_markdown(vm, results, {"host": totals})
    assert "| host | 3 | 1 | 2 | 1 | 50.0% | import 1, link 1 | 1 |" in md
    assert "| c | FAIL: TVM fails | **import** (upstream): TVM fails |" in md


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(f'[models.unused]\nsource = "{onnx_test_data()}/pytorch-converted/test_ReLU/model.onnx"\n'
                        '[targets.host]\nbackend = "c"\ntoolchain = "host-gcc"\n'
                        '[targets.cortex-m4]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n')
    first = run_doit(pipeline, "-n", "2", "conformance", f"conformance={SUBSET}")  # -n: actions must pickle
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    return root, pipeline, first


def test_subset_sweep_records_every_outcome(swept):
    root, _, first = swept
    report = fsutil.read_json(root / "out" / "conformance.json")
    outcome = {(r["target"], r["case"]): r for r in report["results"]}
    for target in ("host", "cortex-m4"):
        assert outcome[(target, "pc_ReLU")]["status"] == "passed"
        assert outcome[(target, "pc_Conv2d_depthwise_padded")]["status"] == "passed"
    assert outcome[("host", "simple_sequence_model7")]["status"] == "passed"  # a tuple inside main
    assert outcome[("host", "node_relu")]["status"] == "passed"  # a node test, written out by the sweep
    assert ("cortex-m4", "node_relu") not in outcome
    assert ("cortex-m4", "simple_sequence_model7") not in outcome  # the emulated target runs one suite
    strings = outcome[("host", "simple_strnorm_model_monday_empty_output")]
    assert strings["status"] == "import" and strings["upstream"] and strings["error"]
    assert report["vm"]["simple_strnorm_model_monday_empty_output"]["ok"] is False
    assert report["totals"]["host"]["pass_rate_of_vm_ok"] == 1.0
    assert "host: 4/5 passed; 4/4 of the tests TVM's VM runs correctly (100.0%)" in first.stdout
    assert "| pc_ReLU | ok | pass | pass |" in (root / "out" / "conformance.md").read_text()


def test_second_sweep_runs_nothing(swept):
    _, pipeline, _ = swept
    again = run_doit(pipeline, "conformance", f"conformance={SUBSET}")
    assert again.returncode == 0 and again.executed() == []


def test_case_model_uses_the_tests_own_data():
    case = discover(onnx_test_data(), ("pc_ReLU",))[0]
    model = case.model()
    assert isinstance(case, Case) and model.expected.name == "test_data_set_0" and model.inputs is None
