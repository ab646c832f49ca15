"""Comparing outputs, and reading them from a test program's standard output."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.execute.compare import compare_one
from tasks.config import load_board
from tasks.frontend.importer import ModelSignature, TensorSpec
from tasks.execute.run import RunError, parse_outputs, run_program

HOST = load_board("host")
SIG = ModelSignature(inputs=(), outputs=(TensorSpec("y", "output_0", (2,), "float32"),))


def test_within_tolerance_passes():
    r = compare_one(np.array([1.0, 2.0], np.float32), np.array([1.0, 2.0001], np.float32), rtol=1e-4, atol=0)
    assert r["passed"] and r["mismatched"] == 0
    assert r["max_abs_error"] == pytest.approx(1e-4, rel=1e-2)
    assert r["max_rel_error"] == pytest.approx(5e-5, rel=1e-2)


def test_mismatch_shows_the_worst_elements():
    actual = np.array([[1.0, 5.0], [3.0, 4.0]], np.float32)
    r = compare_one(actual, np.array([[1.0, 2.0], [3.0, 4.5]], np.float32), rtol=1e-5, atol=1e-5)
    assert not r["passed"] and r["mismatched"] == 2
    assert r["worst"][0] == {"index": [0, 1], "actual": 5.0, "expected": 2.0}
    assert r["worst"][1]["index"] == [1, 1]


def test_shape_mismatch_fails():
    r = compare_one(np.zeros(3), np.zeros(4), 1e-5, 1e-5)
    assert not r["passed"] and "shape" in r["problem"]


def test_parse_outputs():
    data = np.array([1.5, -2.0], np.float32).tobytes().hex()
    out = parse_outputs(f"crtforge-registry 3\ncrtforge-output 0 8 {data}\ncrtforge-done\n", SIG)
    np.testing.assert_array_equal(out["output_0"], [1.5, -2.0])


@pytest.mark.parametrize("stdout, message", [
    ("crtforge-output 0 8 00\ncrtforge-done\n", "1 bytes printed, 8 announced"),
    ("crtforge-output 0 8 0000000000000000\n", "without printing 'crtforge-done'"),
    ("crtforge-done\n", "printed no output 0"),
    ("crtforge-error 2 ValueError: bad\n", "the program reported: crtforge-error 2 ValueError: bad"),
])
def test_parse_outputs_failures(stdout, message):
    with pytest.raises(RunError, match=message):
        parse_outputs(stdout, SIG)


def script(tmp_path, body: str):
    path = tmp_path / "program.elf"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_hang_is_stopped_by_the_timeout(tmp_path):
    program = script(tmp_path, "sleep 30\n")
    with pytest.raises(RunError, match=r"did not finish within 0.5 s on board 'host' .*HINT: raise the target's 'timeout'"):
        run_program(HOST, program, SIG, 0.5, tmp_path / "o.npz", tmp_path / "run.log")
    assert not (tmp_path / "o.npz").exists()


def test_crash_reports_status_and_output(tmp_path):
    program = script(tmp_path, "echo 'crtforge-registry 1'\nkill -SEGV $$\n")
    with pytest.raises(RunError, match=r"(?s)was killed by SIGSEGV .*crtforge-registry 1"):
        run_program(HOST, program, SIG, 10, tmp_path / "o.npz", tmp_path / "run.log")
    assert not (tmp_path / "o.npz").exists()
    assert "exit -11" in (tmp_path / "run.log").read_text()


def test_outputs_with_the_same_name_keep_one_entry_each(tmp_path):
    """Two outputs named 'y' used to collapse into one test.json entry (the second overwrote the first)."""
    from tasks import fsutil
    from tasks.execute.compare import run_compare

    sig = ModelSignature(inputs=(), outputs=(TensorSpec("y", "output_0", (2,), "float32"),
                                             TensorSpec("y", "output_1", (2,), "float32")))
    good, bad = np.array([1, 2], np.float32), np.array([1, 5], np.float32)
    fsutil.save_npz(tmp_path / "out.npz", {"output_0": good, "output_1": bad})
    fsutil.save_npz(tmp_path / "ref.npz", {"output_0": good, "output_1": good})
    fsutil.write_json(tmp_path / "ref.json", {"reference": "tflm"})
    result = run_compare(sig, tmp_path / "out.npz", tmp_path / "ref.npz", tmp_path / "ref.json", 1e-4, 1e-5,
                         tmp_path / "test.json")
    assert list(result["outputs"]) == ["y (output 0)", "y (output 1)"]
    assert result["outputs"]["y (output 0)"]["passed"] and not result["outputs"]["y (output 1)"]["passed"]
    assert result["passed"] is False


def test_a_board_needing_cpu_features_this_machine_lacks_refuses_to_run(tmp_path):
    from dataclasses import replace

    program = script(tmp_path, "echo 'crtforge-done'\n")
    board = replace(HOST, cpu_flags=("avx2", "crtforge_no_such_feature"))
    with pytest.raises(RunError, match=r"needs CPU features this machine lacks: crtforge_no_such_feature "
                                       r"\(from host.toml's cpu_flags\).*HINT: build for board \"host\""):
        run_program(board, program, SIG, 10, tmp_path / "o.npz", tmp_path / "run.log")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from tasks.execute.run import cpu_flags

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm\n")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(arm) == {"fp", "asimd", "evtstrm"}
    assert cpu_flags(tmp_path / "missing") == set()
