"""Hardening: bad input, interrupted and concurrent builds, sanitizers, reproducible outputs, hostile names."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import CONV2D, CONVT, ROOT, SINE, run_doit, target
from tasks import fsutil

SINE_MODEL = f'[models.m]\nsource = "{SINE}"\n'


def unsupported_op_model(path: Path) -> None:
    node = helper.make_node("FrobnicateOp", ["x"], ["y"], name="frob_1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def board_variant(tmp: Path, name: str, base: str, replace: dict[str, str]) -> None:
    """boards/<name>.toml: the shipped board `base` with some text replaced."""
    (tmp / "boards").mkdir(exist_ok=True)
    text = (ROOT / "boards" / f"{base}.toml").read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp / "boards" / f"{name}.toml").write_text(text)


def setup_case(case: str, tmp: Path) -> tuple[str, str]:
    """(pipeline text, the message it must produce) for each fault a user can meet."""
    boards = '[pipeline]\nboards = "boards"\n'
    if case == "toml syntax error":
        return SINE_MODEL + "[targets.t\n", "TOML syntax error"
    if case == "misspelt key":
        return f'[models.m]\nsorce = "{SINE}"\n' + target(), "models.m.sorce: unknown key. HINT: did you mean 'source'?"
    if case == "wrong type":
        return SINE_MODEL + "rtol = [1]\n" + target(), "models.m.rtol: expected a number, got list"
    if case == "model file missing":
        return '[models.m]\nsource = "gone.tflite"\n' + target(), "models.m.source: model file 'gone.tflite' not found"
    if case == "not a model":
        (tmp / "junk.onnx").write_bytes(b"this is not protobuf" * 10)
        return '[models.m]\nsource = "junk.onnx"\n' + target(), "junk.onnx: TVM cannot import this model"
    if case == "truncated model":
        (tmp / "cut.tflite").write_bytes(SINE.read_bytes()[:600])
        return '[models.m]\nsource = "cut.tflite"\n' + target(), "cut.tflite: TVM cannot import this model"
    if case == "op TVM cannot import":
        unsupported_op_model(tmp / "frob.onnx")
        return ('[models.m]\nsource = "frob.onnx"\n' + target(),
                "op FrobnicateOp (node 'frob_1', 1 node(s) in all) is not supported by TVM's ONNX frontend")
    if case == "unknown toolchain":
        return SINE_MODEL + target(toolchain="gcc-avr"), "targets.t.toolchain: unknown toolchain 'gcc-avr'"
    if case == "unknown board":
        return SINE_MODEL + target(board="stm32f4"), "targets.t.board: unknown board 'stm32f4'"
    if case == "toolchain not installed":
        (tmp / "toolchains").mkdir()
        (tmp / "toolchains" / "xgcc.toml").write_text(
            'cc = "xtensa-esp32-elf-gcc"\nar = "xtensa-esp32-elf-ar"\ndebian_package = "gcc-xtensa-lx106"\n')
        return ('[pipeline]\ntoolchains = "toolchains"\n' + SINE_MODEL + target(toolchain="xgcc"),
                "'xtensa-esp32-elf-gcc' is not installed (toolchain 'xgcc'). HINT: apt-get install gcc-xtensa-lx106")
    if case == "float-ABI mismatch":
        return (SINE_MODEL + target(backend="llvm", toolchain="arm-none-eabi-gcc", board="mps2-an386",
                                    extra='tvm = {mfloat-abi = "soft"}'),
                "targets.t.tvm: float ABI mismatch: TVM generates soft-float calls")
    if case == "model too big for the board":
        board_variant(tmp, "tiny", "mps2-an386", {"ram_size = 4194304": "ram_size = 49152"})
        return (boards + f'[models.m]\nsource = "{CONVT}/model.onnx"\n'
                + target(backend="llvm", toolchain="arm-none-eabi-gcc", board="tiny"),
                "model m needs")
    if case == "emulator hang":
        (tmp / "boards").mkdir()
        (tmp / "boards" / "stuck.toml").write_text('kind = "linux"\nrun = ["sh", "-c", "sleep 30", "sh", "{program}"]\n'
                                                   'debian_package = "dash"\n')
        return (boards + SINE_MODEL + target(board="stuck", extra="timeout = 1"),
                "program.elf did not finish within 1 s on board 'stuck'")
    if case == "emulated hard fault":
        # Cortex-M4F code run on a Cortex-M3: the first FPU instruction faults.
        board_variant(tmp, "wrong-cpu", "mps2-an386", {'"-M", "mps2-an386", "-cpu", "cortex-m4"':
                                                       '"-M", "mps2-an385", "-cpu", "cortex-m3"'})
        return (boards + SINE_MODEL + target(backend="llvm", toolchain="arm-none-eabi-gcc", board="wrong-cpu"),
                "program.elf crashed on board 'wrong-cpu' (runner 'qemu-system'): crtforge-fault hard fault")
    if case == "over its budget":
        return (SINE_MODEL + target(extra='budget = {flash = "4K"}'),
                "model m on target t is over its flash budget: ")
    if case == "output mismatch":
        np.savez(tmp / "wrong.npz", **{"0": np.array([[42.0]], np.float32)})
        np.savez(tmp / "in.npz", **{"0": np.array([[1.0]], np.float32)})
        return (f'[models.m]\nsource = "{SINE}"\ninputs = "in.npz"\nexpected = "wrong.npz"\n' + target(),
                "t/m: output 'StatefulPartitionedCall:0': 1 of 1 elements outside rtol 0.0001, atol 1e-05; "
                "worst: [0, 0]")
    raise AssertionError(case)


FAULTS = ["toml syntax error", "misspelt key", "wrong type", "model file missing", "not a model", "truncated model",
          "op TVM cannot import", "unknown toolchain", "unknown board", "toolchain not installed",
          "float-ABI mismatch", "model too big for the board", "emulator hang", "emulated hard fault",
          "output mismatch", "over its budget"]


@pytest.mark.parametrize("case", FAULTS)
def test_every_fault_is_one_clear_error(tmp_path, case):
    text, message = setup_case(case, tmp_path)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(text)
    result = run_doit(pipeline, "test")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-2500:]
    assert "Traceback" not in output
    # Nothing half-written, and nothing a later build would trust: the same build fails the same way.
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    again = run_doit(pipeline, "test")
    assert again.returncode != 0 and message in again.stdout + again.stderr


def test_hostile_names_are_rejected_before_anything_runs(tmp_path):
    for name in ["../../etc", "a/b", "$(id)", "x;rm", "a b", "ünï"]:
        pipeline = tmp_path / "pipeline.toml"
        pipeline.write_text(f'[models."{name}"]\nsource = "{SINE}"\n' + target())
        result = run_doit(pipeline, "build")
        assert result.returncode == 2 and "a model name is a letter" in result.stderr
        pipeline.write_text(SINE_MODEL + target(name=f'"{name}"'))
        result = run_doit(pipeline, "build")
        assert result.returncode == 2 and "a target name is a letter" in result.stderr
    assert not (tmp_path / "out").exists()


def test_paths_with_shell_characters_are_just_paths(tmp_path):
    """Tools get argv lists: a model file named like a shell command builds and runs."""
    odd = tmp_path / "my model; touch PWNED $(id).tflite"
    odd.write_bytes(SINE.read_bytes())
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f'[models.m]\nsource = "{odd.name}"\n' + target())
    result = run_doit(pipeline, "test")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert not list(tmp_path.rglob("PWNED*"))


# --- interrupted builds ------------------------------------------------------------------------------------------

# Files that appear as the build goes, relative to out/.
KILL_AFTER = ["_models/m/import.json", "t/m/plan.json", "t/m/classification.json", "t/m/executor.c",
              "t/m/obj/kernels.o", "t/m/program.elf"]


def test_sigkill_at_any_stage_then_rebuild_equals_a_clean_build(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for d in (clean, killed):
        d.mkdir()
        (d / "pipeline.toml").write_text(SINE_MODEL + target())
    assert run_doit(clean / "pipeline.toml", "test").returncode == 0
    pair = killed / "out" / "t" / "m"
    cut_short = 0  # kills that landed before the build had finished
    for marker in KILL_AFTER:
        proc = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "--dir", str(ROOT), "test",
                                 f"pipeline={killed / 'pipeline.toml'}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (killed / "out" / marker).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        cut_short += proc.poll() is None and not (pair / "test.json").exists()
        os.killpg(proc.pid, signal.SIGKILL)  # doit and the compiler or emulator it may be running
        proc.wait()
    assert cut_short >= 4
    finished = run_doit(killed / "pipeline.toml", "test")
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr
    assert run_doit(killed / "pipeline.toml", "test").executed() == ["test"]  # nothing cut short taken as done
    for name in ["_models/m/import.json", "t/m/kernels.c", "t/m/plan.json", "t/m/metadata.c", "t/m/executor.c",
                 "t/m/m.h", "t/m/libm.a", "t/m/program.elf", "t/m/outputs.npz", "t/m/test.json"]:
        assert filecmp.cmp(clean / "out" / name, killed / "out" / name, shallow=False), name
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name]


# --- parallel and concurrent runs, reproducible outputs ----------------------------------------------------------

def _compared_files(out: Path) -> list[Path]:
    """Everything a build writes that must be byte-identical (logs name absolute paths by design)."""
    return sorted(p.relative_to(out) for p in out.rglob("*")
                  if p.is_file() and p.name != "run.log" and not p.name.startswith(".crtforge."))


# Every backend, board kind, toolchain family and the offload path, on two small models: what the reproducibility
# check needs, in a fraction of the default pipeline's time.
REPRODUCIBLE = (SINE_MODEL + f'[models.ct]\nsource = "{CONVT}/model.onnx"\nexpected = "{CONVT}/test_data_set_0"\n'
                + target("host") + target("host-llvm", backend="llvm")
                + target("m4", backend="llvm", toolchain="arm-none-eabi-gcc", board="mps2-an386")
                + target("m3", toolchain="arm-none-eabi-gcc", board="mps2-an385")
                + target("a64", toolchain="aarch64-linux-gnu-gcc", board="qemu-aarch64")
                + target("m4-clang", backend="llvm", toolchain="clang-cortex-m4", board="mps2-an386")
                + target("offload", extra='offload = ["crtforge_dense"]'))


def test_parallel_and_serial_builds_in_different_folders_are_byte_identical(tmp_path):
    """Two clean builds: `doit -n 2` in one folder, serial in another."""
    dirs = []
    for name, args in (("parallel", ["-n", "2", "build"]), ("serial", ["build"])):
        d = tmp_path / name
        d.mkdir()
        (d / "pipeline.toml").write_text(REPRODUCIBLE)
        result = run_doit(d / "pipeline.toml", *args)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        dirs.append(d / "out")
    files = _compared_files(dirs[0])
    assert files == _compared_files(dirs[1])
    assert sum(1 for f in files if f.name == "program.elf") == 14  # every pair
    different = [f for f in files if not filecmp.cmp(dirs[0] / f, dirs[1] / f, shallow=False)]
    assert different == []


def test_two_doit_processes_on_one_pipeline_serialise(tmp_path):
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f'[models.c]\nsource = "{CONV2D}"\n' + SINE_MODEL + target())
    argv = [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "--dir", str(ROOT), "test",
            f"pipeline={pipeline}"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1 + second.stderr
    assert "another doit is running on out/" in second.stderr
    assert ".  relax:t/m" in out1 and ".  relax:t/m" not in second.stdout  # the second found it all done
    assert fsutil.read_json(tmp_path / "out" / "t" / "m" / "test.json")["passed"] is True


# --- sanitizers --------------------------------------------------------------------------------------------------

def test_host_programs_run_clean_under_asan_and_ubsan(tmp_path):
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(
        SINE_MODEL + f'[models.conv2d]\nsource = "{CONV2D}"\nexpected = "{CONV2D.parent}/test_data_set_0"\n'
        f'[models.convt]\nsource = "{CONVT}/model.onnx"\nexpected = "{CONVT}/test_data_set_0"\n'
        + target("asan-c", toolchain="host-gcc-sanitize")
        + target("asan-llvm", backend="llvm", toolchain="host-gcc-sanitize")
        + target("asan-offload", toolchain="host-gcc-sanitize", extra='offload = ["crtforge_dense"]'))
    result = run_doit(pipeline, "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    logs = list((tmp_path / "out").rglob("run.log"))
    assert len(logs) == 9
    for log in logs:
        text = log.read_text()
        assert "runtime error" not in text and "AddressSanitizer" not in text, log
    # the programs really are instrumented
    needed = subprocess.run(["readelf", "-d", str(tmp_path / "out" / "asan-c" / "m" / "program.elf")],
                            capture_output=True, text=True, check=True).stdout
    assert "libasan" in needed and "libubsan" in needed
