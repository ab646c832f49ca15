"""`doit package`: the CMake and pkg-config consumers in examples/ build with Debian's cmake and make and run under
qemu on Cortex-M4 and AArch64 Linux; the Model Library Format tarball unpacks and builds into a program that
computes what the pair's own program computes."""

from __future__ import annotations

import re
import subprocess
import tarfile

import numpy as np
import pytest

from conftest import ROOT, SINE, run_doit, target
from tasks import fsutil
from tasks.config import load_board
from tasks.execute.run import parse_outputs, runner_argv
from tasks.frontend.importer import read_signature
from tasks.frontend.reference import tflm_outputs

EXAMPLES = ROOT / "examples"
# target → (example folder, board, toolchain file)
CONSUMERS = {"cortex-m4": ("cortex-m", "mps2-an386", "arm-none-eabi.cmake"),
             "aarch64-linux": ("linux", "qemu-aarch64", "aarch64-linux-gnu.cmake")}
XS = (0.5, 1.0, 2.0, 3.0, 4.5, 6.0)  # what examples/cortex-m/main.c evaluates; the Linux one takes them as arguments


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(f'[models.sine]\nsource = "{SINE}"\n'
                        + target("host") + target("host-llvm", backend="llvm")
                        + target("cortex-m4", backend="llvm", toolchain="arm-none-eabi-gcc", board="mps2-an386")
                        + target("aarch64-linux", toolchain="aarch64-linux-gnu-gcc", board="qemu-aarch64"))
    result = run_doit(pipeline, "-n", "2", "package")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return root / "out"


def expected_sine(out, xs) -> np.ndarray:
    """TFLM's outputs at each x: the pair's reference, at points of our choosing."""
    sig = read_signature(out / "_models" / "sine" / "import.json")
    return np.array([tflm_outputs(SINE, sig, {sig.inputs[0].c_name: np.array([[x]], np.float32)})
                     [sig.outputs[0].c_name].item() for x in xs])


def check_printed_sines(out, stdout: str, xs) -> None:
    found = [tuple(map(float, m)) for m in re.findall(r"^sine\(([-\d.]+)\) = ([-\d.]+)$", stdout, re.M)]
    assert [x for x, _ in found] == pytest.approx(list(xs)), stdout
    assert [y for _, y in found] == pytest.approx(list(expected_sine(out, xs)), abs=2e-6), stdout


def run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, f"$ {' '.join(argv)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


def run_on(board_name: str, program, args=()) -> str:
    argv = runner_argv(load_board(board_name), program) + list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target_name", CONSUMERS)
def test_the_cmake_consumer_builds_and_runs(packaged, tmp_path, target_name):
    folder, board, toolchain = CONSUMERS[target_name]
    build = tmp_path / "build"
    run(["cmake", "-S", str(EXAMPLES / folder), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={EXAMPLES / folder / toolchain}",
         f"-DCMAKE_PREFIX_PATH={packaged / target_name / 'sine' / 'package'}"])
    run(["cmake", "--build", str(build)])
    program = build / ("sine-app.elf" if folder == "cortex-m" else "sine-app")
    check_printed_sines(packaged, run_on(board, program, () if folder == "cortex-m" else map(str, XS)), XS)


@pytest.mark.parametrize("target_name", CONSUMERS)
def test_the_pkg_config_consumer_builds_and_runs(packaged, tmp_path, target_name):
    folder, board, _ = CONSUMERS[target_name]
    pc_dir = packaged / target_name / "sine" / "package" / "lib" / "pkgconfig"
    run(["make", "-C", str(EXAMPLES / folder), f"OUT={tmp_path}", f"PKG_CONFIG_PATH={pc_dir}"])
    program = tmp_path / ("sine-app.elf" if folder == "cortex-m" else "sine-app")
    check_printed_sines(packaged, run_on(board, program, () if folder == "cortex-m" else map(str, XS)), XS)


def test_an_incompatible_version_is_refused_by_find_package(packaged, tmp_path):
    (tmp_path / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.20)\nproject(p C)\n"
                                             "find_package(sine 1.0 REQUIRED)\n")
    proc = subprocess.run(["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b"),
                           f"-DCMAKE_PREFIX_PATH={packaged / 'host' / 'sine' / 'package'}"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "0.25.0" in proc.stderr and "not" in proc.stderr


def test_the_manifest_says_where_every_byte_came_from(packaged):
    package = packaged / "cortex-m4" / "sine" / "package"
    m = fsutil.read_json(package / "share" / "sine" / "manifest.json")
    assert m["models"] == [{"name": "sine", "source": SINE.name, "sha256": fsutil.sha256_file(SINE)}]
    assert m["versions"]["apache-tvm"] == "0.27.0.post1" and m["versions"]["apache-tvm-ffi"]
    assert m["tools"]["cc"].startswith("arm-none-eabi-gcc") and "QEMU" in m["tools"]["emulator"]
    assert "-mfloat-abi=hard" in m["flags"]["cflags"] and "--specs=rdimon.specs" in m["flags"]["ldflags"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert m["crtforge"]["commit"] == head and isinstance(m["crtforge"]["modified"], bool)
    assert m["files"]["lib/libsine.a"] == fsutil.sha256_file(package / "lib" / "libsine.a")
    assert m["target"]["tvm_target"]["mcpu"] == "cortex-m4"


MLF_COMMON = {"metadata.json", "codegen/host/include/sine.h", "codegen/host/src/executor.c",
              "codegen/host/src/external.c", "codegen/host/src/weights.S", "codegen/host/src/weights.bin",
              "parameters/sine.params", "src/sine_float.tflite", "runtime/src/crt.c", "runtime/src/registry.c",
              "runtime/include/crtforge/crt.h"}
MLF_BACKEND = {"host": {"codegen/host/src/kernels.c", "codegen/host/src/metadata.c"},
               "host-llvm": {"codegen/host/lib/kernels.o", "codegen/host/lib/metadata.o"}}


@pytest.mark.parametrize("target_name", MLF_BACKEND)
def test_the_mlf_tarball_unpacks_and_builds_the_model(packaged, tmp_path, target_name):
    pair = packaged / target_name / "sine"
    with tarfile.open(pair / "sine.mlf.tar") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "mlf", filter="data")
    assert MLF_COMMON | MLF_BACKEND[target_name] <= names
    mlf = tmp_path / "mlf"
    meta = fsutil.read_json(mlf / "metadata.json")
    module = meta["modules"]["sine"]
    assert meta["version"] == 7 and module["executors"] == ["aot"] and module["style"] == "full-model"
    assert module["memory"]["functions"]["main"][0]["workspace_size_bytes"] == \
        fsutil.read_json(pair / "plan.json")["arena_bytes"]

    # Built from the tarball alone (and the pair's test program source): the same outputs, bit for bit.
    sources = [*sorted((mlf / "codegen/host/src").glob("*.c")), mlf / "codegen/host/src/weights.S",
               *sorted((mlf / "codegen/host/lib").glob("*.o")),
               *(mlf / "runtime/src" / n for n in ("crt.c", "registry.c", "harness.c")), pair / "harness.c"]
    program = tmp_path / "from-mlf"
    run(["gcc", "-std=c11", "-O2", "-w", f"-I{mlf / 'codegen/host/include'}", f"-I{mlf / 'runtime/include'}",
         f"-Wa,-I{mlf / 'codegen/host/src'}", *map(str, sources), "-lm", "-o", str(program)])
    sig = read_signature(packaged / "_models" / "sine" / "import.json")
    ours = parse_outputs(subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout, sig)
    theirs = parse_outputs(subprocess.run([str(pair / "program.elf")], capture_output=True, text=True,
                                          check=True).stdout, sig)
    for k in theirs:
        assert ours[k].tobytes() == theirs[k].tobytes()


def test_the_mlf_parameters_are_the_weights(packaged):
    import tvm

    pair = packaged / "host" / "sine"
    with tarfile.open(pair / "sine.mlf.tar") as tar:
        blob = tar.extractfile("parameters/sine.params").read()
    params = tvm.runtime.load_param_dict(bytearray(blob))
    ours = fsutil.load_npz(pair / "params.npz")
    assert sorted(params) == sorted(ours)
    for k, v in ours.items():
        np.testing.assert_array_equal(params[k].numpy(), v)
