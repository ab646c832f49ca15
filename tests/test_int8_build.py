"""int8 TFLite models through the whole pipeline: crtforge's integer kernels, compared exactly with TFLM.

One pipeline of small random single-op models (zero points != 0, per-channel scales 1e-4..1) on the host (portable
C), Cortex-M4 (the DSP path, under qemu) and Cortex-M3 (portable, no DSP), built once for every test here.
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import ROOT, run_doit, target
from tasks import fsutil
from tasks.compile import int8
from tasks.compile.plan import ARENA_ALIGN
from tasks.compile.quantize import Activation
from tasks.layout import PairFiles, PipelineFiles
from tasks.naming import c_identifier

import int8_models as m

A = Activation
CASES = {
    "fc-per-tensor": m.random_fully_connected(11, 2, 37, 21, A.RELU, False).tflite,
    "fc-per-channel": m.random_fully_connected(12, 1, 64, 10, A.NONE, True).tflite,
    "conv-same-s2": m.random_conv2d(13, (1, 9, 7, 5), 6, (3, 3), (2, 2), (1, 1), True, A.RELU6).tflite,
    "conv-valid-dil": m.random_conv2d(14, (1, 8, 8, 4), 8, (3, 2), (1, 1), (2, 1), False, A.NONE).tflite,
    "dw-blocked": m.random_conv2d(15, (1, 7, 6, 12), 0, (3, 3), (1, 1), (1, 1), True, A.RELU, True, 1).tflite,
    "dw-mult2": m.random_conv2d(16, (1, 6, 5, 3), 0, (3, 3), (2, 2), (1, 1), True, A.NONE, True, 2).tflite,
    "add": m.random_binary(17, "ADD", (1, 4, 4, 3), A.RELU).tflite,
    "mul": m.random_binary(18, "MUL", (1, 5, 6), A.RELU6).tflite,
    "add-n1to1": m.random_binary(23, "ADD", (1, 9), A.RELU_N1_TO_1).tflite,
    "avg": m.random_pool(19, "AVERAGE_POOL_2D", (1, 7, 7, 3), (3, 3), (2, 2), True, A.NONE).tflite,
    "max": m.random_pool(20, "MAX_POOL_2D", (1, 6, 6, 2), (2, 2), (2, 2), False, A.RELU).tflite,
    "softmax": m.softmax(21, (3, 12))[0],
    "mean-hw": m.mean_model((1, 5, 4, 8), [1, 2], False, 0.05, 3, 0.02, -7),
    "mean-c-keep": m.mean_model((2, 3, 4, 6), [3], True, 0.03, -5, 0.03, -5),
}
TARGETS = {"host": target("host"), "cortex-m4": target("cortex-m4", "llvm", "arm-none-eabi-gcc", "mps2-an386"),
           "cortex-m3": target("cortex-m3", "c", "arm-none-eabi-gcc", "mps2-an385")}
LOGISTIC_TFLITE, _ = m.logistic(21, (1, 10))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    models = ""
    for name, data in {**CASES, "logistic": LOGISTIC_TFLITE}.items():
        (root / f"{name}.tflite").write_bytes(data)
        models += f'[models.{name}]\nsource = "{name}.tflite"\n'
    pipeline = root / "pipeline.toml"
    pipeline.write_text('[pipeline]\nout = "out"\n' + models + "".join(TARGETS.values()))
    result = run_doit(pipeline, "-n", "4", "test")
    return root, result


def _files(root, target_name: str, model: str) -> PairFiles:
    return PipelineFiles(root / "out").pair(target_name, model, c_identifier(model),
                                            "llvm" if target_name == "cortex-m4" else "c")


@pytest.mark.parametrize("target_name", list(TARGETS))
@pytest.mark.parametrize("model", list(CASES))
def test_outputs_equal_tflm_exactly(built, target_name, model):
    root, result = built
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    test = fsutil.read_json(_files(root, target_name, model).test_json)
    assert test["passed"] and test["reference"] == "tflm"
    [out] = test["outputs"].values()
    assert out["exact"] and out["atol"] == 0.0 and out["max_abs_error"] == 0.0 and out["mismatched"] == 0
    ops = fsutil.read_json(_files(root, target_name, model).plan_json)["ops"]
    assert sum(ops["integer"].values()) == 1 and ops["tvm_float"] == ops["tvm_integer"] == []  # ours, not TVM's


def test_int8_ops_run_integer_and_activations_stay_int8(built):
    root, _ = built
    f = _files(root, "cortex-m4", "conv-same-s2")
    plan = fsutil.read_json(f.plan_json)
    assert plan["ops"] == {"integer": {"CONV_2D": 1}, "tvm_float": [], "tvm_integer": [], "other": []}
    assert {t["dtype"] for t in plan["tensors"]} == {"int8"}
    # The output is written straight into the caller's buffer (5*4*6 int8 bytes); the arena holds only the input
    # column as int16 (3*3*5 = 45 entries in whole quads: 2 * 48 bytes), for that call.
    assert [(s["kind"], s["nbytes"]) for s in plan["storages"]] == [("output", 120), ("workspace", 96)]
    assert plan["arena_bytes"] == -(-96 // ARENA_ALIGN) * ARENA_ALIGN
    c = f.external_c.read_text()
    assert "the model's CONV_2D (1x9x7x5 -> 1x5x4x6, kernel 3x3, stride 2x2, RELU6)" in c
    # A small filter is widened to int16 at build time (int8.WIDE_WEIGHTS_MAX_BYTES), not dequantized to float.
    assert "crtforge_int8_conv2d_wide(&conv_same_s2_int8_0_conv2d_shape" in c
    # Linked data, from weights.S: 6 rows of 45, each zero-padded to 48 (quantize.conv_matrix).
    assert "extern const int16_t conv_same_s2_int8_0_conv2d_weights[288];" in c
    assert "conv_same_s2_int8_0_conv2d_weights:\n  .incbin" in f.weights_asm.read_text()
    # Cortex-M3 has no DSP extension: int8 weights there.
    m3 = _files(root, "cortex-m3", "conv-same-s2").external_c.read_text()
    assert "crtforge_int8_conv2d(&conv_same_s2_int8_0_conv2d_shape" in m3
    assert "extern const int8_t conv_same_s2_int8_0_conv2d_weights[288];" in m3
    assert "float" not in c


def test_an_op_without_an_integer_kernel_runs_as_float_and_says_so(built):
    root, _ = built
    plan = fsutil.read_json(_files(root, "host", "logistic").plan_json)
    assert plan["ops"]["integer"] == {} and plan["ops"]["tvm_float"]
    assert any("sigmoid" in k for k in plan["ops"]["tvm_float"])
    row = next(line for line in (root / "out" / "results.md").read_text().splitlines() if "| logistic" in line)
    assert row.rstrip().endswith(f"float:{len(plan['ops']['tvm_float'])} |")
    # crt's int8 kernels go into the libraries that call them, and only those (the model flash counts them).
    members = lambda f: subprocess.run(["ar", "t", str(f.library)], capture_output=True, text=True,  # noqa: E731
                                       check=True).stdout.split()
    assert "crt_int8.o" not in members(_files(root, "host", "logistic"))
    assert "crt_int8.o" in members(_files(root, "host", "add"))


def test_unsupported_quantisation_falls_back_to_float():
    """A fully connected layer with int16 activations (TFLite's 16x8 scheme) is left to TVM's float path."""
    case = m.random_fully_connected(22, 1, 8, 4, A.NONE, False)
    mod = load_relax_bytes(case.tflite)
    assert len(int8.partition(mod, "ok").kernels) == 1
    as_int16 = _retype_activations(case.tflite)
    assert int8.partition(load_relax_bytes(as_int16), "i16").kernels == []


def load_relax_bytes(data: bytes):
    import tflite
    from tvm.relax.frontend.tflite import from_tflite

    return from_tflite(tflite.Model.GetRootAsModel(data, 0))


def _retype_activations(data: bytes) -> bytes:
    """The model with its int8 activation tensors (input and output) made int16."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    sg = model.subgraphs[0]
    for i in (*sg.inputs, *sg.outputs):
        sg.tensors[i].type = fb.TensorType.INT16
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_clip_bounds_map_back_to_tflite_activations():
    out = int8.Quant(scale=0.05, zero_point=-10)
    assert int8._activation(-10.0, 127.0, out) == A.RELU
    assert int8._activation(-10.0, 110.0, out) == A.RELU6
    assert int8._activation(-30.0, 10.0, out) == A.RELU_N1_TO_1
    assert int8._activation(-128.0, 127.0, out) == A.NONE
    with pytest.raises(int8.Int8Error, match=r"clip\(-5, 100\) is not a TFLite fused activation"):
        int8._activation(-5.0, 100.0, out)


def test_default_pipeline_int8_models_match_tflm_on_the_host(tmp_path):
    """The two int8 bench models of pipeline.toml, host only here (every target runs in `doit test`)."""
    models = "".join(f'[models.{n}]\nsource = "{ROOT}/models/bench/{n.replace("-", "_")}.tflite"\n'
                     for n in ("mlp-int8", "dscnn-int8"))
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[pipeline]\nout = "out"\n' + models + TARGETS["host"])
    result = run_doit(pipeline, "-n", "2", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for model, ops in (("mlp-int8", {"FULLY_CONNECTED": 3}),
                       ("dscnn-int8", {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 4, "AVERAGE_POOL_2D": 1,
                                       "FULLY_CONNECTED": 1})):
        f = _files(tmp_path, "host", model)
        assert fsutil.read_json(f.test_json)["max_abs_error"] == 0.0
        plan = fsutil.read_json(f.plan_json)
        assert plan["ops"]["integer"] == ops and plan["ops"]["tvm_float"] == []
    # The MLP's weights are stored as int8 bytes (256*512 + 512*512 + 512*10), not as float32 (4x that).
    weights = 256 * 512 + 512 * 512 + 512 * 10
    flash = fsutil.read_json(_files(tmp_path, "host", "mlp-int8").sizes_json)["library"]["flash"]
    assert weights < flash < 480 * 1024
    # The weights are linked data (weights.bin), not C text: external.c stays small whatever the model's size.
    f = _files(tmp_path, "host", "mlp-int8")
    assert weights <= f.weights_bin.stat().st_size < weights + 3 * 64 and f.external_c.stat().st_size < 64 * 1024
    # Off a DSP core no layer is widened to int16 (widening saves nothing where compilers vectorise int8 dots).
    c = _files(tmp_path, "host", "mlp-int8").external_c.read_text()
    assert c.count("status = crtforge_int8_fully_connected(") == 3 and "_wide(" not in c
    # Two int8 activations of 512 and the int16 input column (1,024 bytes), not float32 tensors.
    assert fsutil.read_json(_files(tmp_path, "host", "mlp-int8").plan_json)["arena_bytes"] == 2048


def test_softmax_beta_other_than_one_is_refused(tmp_path):
    """TVM's TFLite frontend drops SOFTMAX's beta; the importer refuses the model instead of building softmax(x)."""
    from tasks.frontend.importer import ModelImportError, load_relax

    path = tmp_path / "beta2.tflite"
    path.write_bytes(m.softmax(24, (1, 10), beta=2.0)[0])
    with pytest.raises(ModelImportError, match=r"beta2\.tflite: SOFTMAX \(operator #0\) has beta 2; .*HINT: fold beta"):
        load_relax(path)
    path.write_bytes(m.softmax(24, (1, 10), beta=1.0)[0])
    assert load_relax(path) is not None
