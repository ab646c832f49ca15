"""No stale result ever passes: each false verdict found in the old layout, reproduced, and the messages that
replaced tracebacks. Each test builds its own small pipeline (no shared state, any order)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, SINE, doit_argv, run_doit, target
from tasks import fsutil

SINE_MODEL = f'[models.m]\nsource = "{SINE}"\n'


def dense_model(path: Path, weights: np.ndarray, external: bool = False, outputs: int = 1,
                bias: np.ndarray | None = None, relu: bool = True) -> None:
    """y = relu(x @ W + b) for x of shape [1, 4]; with `external`, W and b live in `<path>.data`; with
    outputs=2 the same tensor is also returned through an Identity."""
    b = np.zeros(weights.shape[1], np.float32) if bias is None else bias
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["s"]),
             helper.make_node("Relu" if relu else "Identity", ["s"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights.shape[1]])]
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["y"], ["y_again"]))
        outs.append(helper.make_tensor_value_info("y_again", TensorProto.FLOAT, [1, weights.shape[1]]))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outs,
                              [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)  # onnxruntime's
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save(model, str(path))


def ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def passed(result) -> bool:
    return result.returncode == 0 and "| yes " in result.stdout


# --- false results ---------------------------------------------------------------------------------------------

def test_onnx_external_data_is_a_dependency(tmp_path):
    """Rewriting only the weights file of a model saved with external data rebuilds it with the new weights."""
    rng = np.random.default_rng(0)
    model = tmp_path / "dense.onnx"
    dense_model(model, rng.standard_normal((4, 8)).astype(np.float32), external=True)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[models.m]\nsource = "dense.onnx"\ninputs = "in.npz"\n' + target())
    assert passed(run_doit(pipeline, "test"))
    data = tmp_path / "dense.onnx.data"
    before = model.read_bytes()
    dense_model(tmp_path / "other.onnx", rng.standard_normal((4, 8)).astype(np.float32), external=True)
    shutil.copyfile(tmp_path / "other.onnx.data", data)  # the same layout, other weights; the .onnx is unchanged
    assert model.read_bytes() == before
    again = run_doit(pipeline, "test")
    assert passed(again), again.stdout[-2000:] + again.stderr
    outputs = fsutil.load_npz(tmp_path / "out" / "t" / "m" / "outputs.npz")["output_0"]
    np.testing.assert_allclose(outputs, ort(model, x)[0], rtol=1e-5, atol=1e-6)  # the new weights shipped
    assert {"import:m", "reference:m", "relax:t/m", "link:t/m"} <= set(again.executed())


def test_two_pipeline_files_sharing_out_share_its_database(tmp_path):
    """A strict pipeline that fails must still fail after a loose one in the same folder passed."""
    np.savez(tmp_path / "in.npz", **{"0": np.array([[1.0]], np.float32)})
    np.savez(tmp_path / "wrong.npz", **{"0": np.array([[42.0]], np.float32)})
    strict = tmp_path / "strict.toml"
    strict.write_text(SINE_MODEL + 'inputs = "in.npz"\nexpected = "wrong.npz"\n' + target())
    loose = tmp_path / "loose.toml"
    loose.write_text(SINE_MODEL + 'inputs = "in.npz"\n' + target())
    assert run_doit(strict, "test").returncode != 0
    assert passed(run_doit(loose, "test"))
    again = run_doit(strict, "test")
    assert again.returncode != 0 and "outputs differ from the reference" in again.stdout + again.stderr
    # The bisector, run on the mismatch, finds every kernel agreeing with TFLM: the expected file is what differs.
    assert "bisect t/m: every compared call agrees with tflm" in again.stdout + again.stderr
    assert fsutil.read_json(tmp_path / "out" / "t" / "m" / "test.json")["passed"] is False


def test_two_pipeline_files_sharing_out_take_turns(tmp_path):
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text(SINE_MODEL + target())
    first = subprocess.Popen(doit_argv(tmp_path / "a.toml", "test"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "out" / ".crtforge.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(doit_argv(tmp_path / "b.toml", "test"), capture_output=True, text=True, timeout=300)
    first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "another doit is running on out/ (lock .crtforge.lock); waiting for it" in second.stderr


def test_switching_out_away_and_back_uses_that_folders_state(tmp_path):
    """out=a, then out=b with other inputs, then back to a: a's results are rebuilt for the current inputs."""
    np.savez(tmp_path / "one.npz", **{"0": np.array([[1.0]], np.float32)})
    np.savez(tmp_path / "two.npz", **{"0": np.array([[2.0]], np.float32)})
    pipeline = tmp_path / "pipeline.toml"

    def run(out: str, inputs: str):
        pipeline.write_text(f'[pipeline]\nout = "{out}"\n' + SINE_MODEL + f'inputs = "{inputs}"\n' + target())
        result = run_doit(pipeline, "test")
        assert passed(result), result.stdout[-2000:] + result.stderr

    run("a", "one.npz")
    run("b", "two.npz")
    run("a", "two.npz")
    a = tmp_path / "a"
    assert fsutil.load_npz(a / "_models" / "m" / "inputs.npz")["serving_default_dense_input_0"][0, 0] == 2.0
    b_ref = fsutil.load_npz(tmp_path / "b" / "_models" / "m" / "reference.npz")["output_0"]
    np.testing.assert_array_equal(fsutil.load_npz(a / "_models" / "m" / "reference.npz")["output_0"], b_ref)
    np.testing.assert_allclose(fsutil.load_npz(a / "t" / "m" / "outputs.npz")["output_0"], b_ref, rtol=1e-5)


def test_a_tensor_returned_twice_is_copied_from_its_buffer(tmp_path):
    """y and Identity(y): one tensor, two outputs. The second is copied from the first one's buffer (not NULL),
    and both appear in test.json."""
    model = tmp_path / "twice.onnx"
    dense_model(model, np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32), outputs=2)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[models.m]\nsource = "twice.onnx"\n' + target()
                        + target("m4", "llvm", "clang-cortex-m4", "mps2-an386"))
    result = run_doit(pipeline, "test")
    assert passed(result), result.stdout[-3000:] + result.stderr
    for t in ("t", "m4"):
        pair = tmp_path / "out" / t / "m"
        executor = (pair / "executor.c").read_text()
        assert "memcpy(outputs->output_1, NULL" not in executor
        assert "memcpy(outputs->output_1, outputs->output_0, 32);" in executor
        outputs = fsutil.load_npz(pair / "outputs.npz")
        np.testing.assert_array_equal(outputs["output_0"], outputs["output_1"])
        assert np.abs(outputs["output_1"]).max() > 0
        assert sorted(fsutil.read_json(pair / "test.json")["outputs"]) == ["y", "y_again"]


def test_nan_and_inf_in_weights_and_inputs_compile(tmp_path):
    weights = np.ones((4, 8), np.float32)
    model = tmp_path / "odd.onnx"
    # No ReLU: TVM's maps NaN to 0 where onnxruntime's keeps it; this test is about the literals compiling.
    dense_model(model, weights, bias=np.array([np.nan, np.inf, -np.inf, 0, 1, 2, 3, 4], np.float32), relu=False)
    x = np.array([[1.0, np.inf, 0.5, -2.0]], np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[models.m]\nsource = "odd.onnx"\ninputs = "in.npz"\n' + target())
    result = run_doit(pipeline, "test")
    assert passed(result), result.stdout[-3000:] + result.stderr
    executor = (tmp_path / "out" / "t" / "m" / "executor.c").read_text()
    assert "NAN" in executor and "INFINITY" in executor and "#include <math.h>" in executor
    out = fsutil.load_npz(tmp_path / "out" / "t" / "m" / "outputs.npz")["output_0"]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ort(model, x)[0]))


def test_longest_names_build(tmp_path):
    """Model and target names at the 64-character limit go through every stage (file names included)."""
    model, tgt = "m" * 64, "t" * 64
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f'[models.{model}]\nsource = "{SINE}"\n' + target(tgt))
    result = run_doit(pipeline, "test")
    assert passed(result), result.stdout[-2000:] + result.stderr
    assert (tmp_path / "out" / tgt / model / f"lib{model}.a").is_file()


# --- messages, not tracebacks ---------------------------------------------------------------------------------------

def _fails_with(tmp_path, text: str, message: str, command: str = "test", returncode: int | None = None) -> None:
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(text)
    result = run_doit(pipeline, command)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output, output[-2500:]
    assert "Traceback" not in output
    if returncode is not None:
        assert result.returncode == returncode


def test_a_linux_cross_toolchain_on_the_host_board(tmp_path):
    _fails_with(tmp_path, SINE_MODEL + target(toolchain="aarch64-linux-gnu-gcc"),
                "program.elf is built for AARCH64, but board 'host' runs programs natively on this x86_64 machine. "
                "HINT: give the target a board for that machine")


def test_a_board_whose_run_command_is_not_installed(tmp_path):
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "nowhere.toml").write_text('kind = "linux"\nrun = ["qemu-nowhere", "{program}"]\n'
                                                      'debian_package = "qemu-nowhere"\n')
    _fails_with(tmp_path, '[pipeline]\nboards = "boards"\n' + SINE_MODEL + target(board="nowhere"),
                "nowhere.toml: 'qemu-nowhere' is not installed (board 'nowhere'). HINT: apt-get install qemu-nowhere")


@pytest.mark.parametrize("key", ["inputs", "expected"])
def test_inputs_or_expected_that_are_not_npz(tmp_path, key):
    (tmp_path / "bad.npz").write_text("plain text")
    _fails_with(tmp_path, SINE_MODEL + f'{key} = "bad.npz"\n' + target(),
                f"bad.npz: {key} is not a NumPy .npz archive")


@pytest.mark.parametrize("out, message", [("afile", "pipeline.out: 'afile' is a file, not a folder"),
                                          ("/proc/crtforge-out", "pipeline.out: cannot write to the out folder")])
def test_out_that_cannot_hold_outputs(tmp_path, out, message):
    (tmp_path / "afile").write_text("")
    _fails_with(tmp_path, f'[pipeline]\nout = "{out}"\n' + SINE_MODEL + target(), message, "build", 2)


def test_pipeline_argument_that_is_a_folder_or_not_utf8(tmp_path):
    result = run_doit(tmp_path, "build")
    assert result.returncode == 2 and "pipeline file is a folder, not a file" in result.stderr, result.stderr
    binary = tmp_path / "pipeline.toml"
    binary.write_bytes(b"[models.m]\nsource = \"\xff\xfe.tflite\"\n")
    result = run_doit(binary, "build")
    assert result.returncode == 2 and "pipeline file is not UTF-8 text" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def clean_sine(tmp_path_factory):
    """A clean build of sine on the host, to compare interrupted-then-finished builds with (read only)."""
    root = tmp_path_factory.mktemp("clean")
    (root / "pipeline.toml").write_text(SINE_MODEL + target())
    assert passed(run_doit(root / "pipeline.toml", "test"))
    return root / "out" / "t" / "m"


# Ctrl-C at several points after the import: the reference, the Relax build (inside TVM's FoldConstant, whose
# Python callbacks swallowed the interrupt and let the build record an unfolded kernel), codegen or link.
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1])
def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, clean_sine, delay):
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(SINE_MODEL + target())
    proc = subprocess.Popen(doit_argv(pipeline, "test"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "out" / "_models" / "m" / "import.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: doit and whatever it runs
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "crtforge: interrupted" in err and "Traceback" not in err
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    finished = run_doit(pipeline, "test")
    assert passed(finished), finished.stdout[-2000:] + finished.stderr
    for name in ("kernels.c", "executor.c", "program.elf"):  # nothing the interrupt touched was kept
        assert (tmp_path / "out" / "t" / "m" / name).read_bytes() == (clean_sine / name).read_bytes(), name


def test_doit_list_does_not_wait_for_a_build(tmp_path):
    """The lock is taken by commands that build: `doit list` during a build answers at once."""
    import fcntl

    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(SINE_MODEL + target())
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".crtforge.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running build holds it
        listed = subprocess.run(doit_argv(pipeline, "list"), capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and "build" in listed.stdout and "waiting" not in listed.stderr
        building = subprocess.Popen(doit_argv(pipeline, "build"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        time.sleep(3)
        assert building.poll() is None  # waits for the lock
    _, err = building.communicate(timeout=120)
    assert building.returncode == 0 and "waiting for it" in err


# --- dependencies derived from the code ---------------------------------------------------------------------------

@pytest.fixture
def project_copy(tmp_path):
    """The project's code in a folder of its own, so a test can edit a stage module, config.py or a toolchain."""
    root = tmp_path / "crtforge"
    root.mkdir()
    for name in ("dodo.py", "tasks", "crt", "toolchains", "boards", "bench"):
        src = ROOT / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copyfile(src, root / name))
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(SINE_MODEL + target())
    built = run_doit(pipeline, "test", root=root)
    assert passed(built), built.stdout[-2000:] + built.stderr
    return root, pipeline


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_editing_code_or_a_toolchain_reruns_exactly_its_readers(project_copy):
    root, pipeline = project_copy

    def rerun() -> set[str]:
        result = run_doit(pipeline, "test", root=root)
        assert passed(result), result.stdout[-2000:] + result.stderr
        return set(result.executed()) - {"test"}  # the table always prints

    assert rerun() == set()
    _append(root / "tasks" / "execute" / "compare.py", "\n# edited\n")
    assert rerun() == {"compare:t/m"}
    _append(root / "tasks" / "execute" / "run.py", "\n# edited\n")  # same outputs: compare need not rerun
    assert rerun() == {"execute:t/m"}
    _append(root / "tasks" / "emit" / "templates" / "harness.c.j2", "\n/* edited */\n")
    assert rerun() == {"link:t/m"}  # a comment: the same objects, so nothing after the link reruns
    _append(root / "toolchains" / "host-gcc.toml", "\n# a comment changes no setting\n")
    assert rerun() == set()
    text = (root / "toolchains" / "host-gcc.toml").read_text()
    (root / "toolchains" / "host-gcc.toml").write_text(text.replace("cflags = [", 'cflags = ["-DCRTFORGE_EDITED", ', 1))
    assert "link:t/m" in rerun() <= {"link:t/m", "execute:t/m", "compare:t/m"}
    pipeline.write_text(pipeline.read_text().replace('board = "host"\n', 'board = "host"\ntimeout = 30\n'))
    assert rerun() == {"execute:t/m"}  # a setting only the run stage reads
    _append(root / "tasks" / "config.py", "\n# edited\n")  # every stage reads its settings through config.py
    assert rerun() == {"import:m", "reference:m", "relax:t/m", "classify:t/m", "codegen:t/m", "link:t/m",
                       "execute:t/m", "compare:t/m"}
