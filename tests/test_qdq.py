"""ONNX QDQ models (onnxruntime's static quantiser) on crtforge's int8 kernels, compared with onnxruntime.

The models are quantised here as a user would (tasks/bench/qdq_nets.py), built once for the host (portable C)
and Cortex-M3 (no FPU: the float requantisation in soft float) for every test of the module.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_doit, target
from tasks import fsutil
from tasks.bench import qdq_nets
from tasks.compile import int8
from tasks.compile import quantize as qz
from tasks.frontend.importer import load_relax
from tasks.frontend.reference import _is_qdq
from tasks.layout import PipelineFiles
from tasks.naming import c_identifier
from test_int8_kernels import ChannelQuantC

BENCH = ROOT / "models" / "bench"
TARGETS = {"host": target("host"), "cortex-m3": target("cortex-m3", "c", "arm-none-eabi-gcc", "mps2-an385")}


def small_float_model(path: Path) -> None:
    """Conv 3x3 + ReLU, depthwise 3x3 stride 2 with asymmetric pads + ReLU, Reshape, MatMul, Add (NCHW)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    u = lambda lim, shape: rng.uniform(-lim, lim, shape).astype(np.float32)  # noqa: E731
    inits = {"w1": u(0.5, (8, 4, 3, 3)), "b1": u(0.1, 8), "w2": u(0.5, (8, 1, 3, 3)), "b2": u(0.1, 8),
             "w3": u(0.1, (128, 10)), "b3": u(0.1, 10), "shape": np.array([1, 128], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[0, 0, 1, 1],
                              strides=[2, 2], group=8),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Reshape", ["r2", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "w3"], ["m"]),
             helper.make_node("Add", ["m", "b3"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qdq_models")
    small_float_model(root / "small.onnx")
    qdq_nets.quantize_qdq(root / "small.onnx", root / "small_qdq.onnx")
    qdq_nets.quantize_qdq(root / "small.onnx", root / "uint8_qdq.onnx", uint8_activations=True)
    return {"small-qdq": root / "small_qdq.onnx", "uint8-qdq": root / "uint8_qdq.onnx",
            "convnet-qdq": BENCH / "convnet_qdq.onnx"}


@pytest.fixture(scope="module")
def built(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("qdq")
    text = '[pipeline]\nout = "out"\n' + "".join(f'[models.{n}]\nsource = "{p}"\n' for n, p in models.items())
    pipeline = root / "pipeline.toml"
    pipeline.write_text(text + "".join(TARGETS.values()))
    result = run_doit(pipeline, "-n", "2", "test")
    return root, result


def _files(root: Path, target_name: str, model: str):
    return PipelineFiles(root / "out").pair(target_name, model, c_identifier(model), "c")


@pytest.mark.parametrize("target_name", list(TARGETS))
@pytest.mark.parametrize("model", ["small-qdq", "uint8-qdq", "convnet-qdq"])
def test_outputs_equal_onnxruntime(built, target_name, model):
    root, result = built
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    test = fsutil.read_json(_files(root, target_name, model).test_json)
    assert test["passed"] and test["reference"] == "onnxruntime"
    # The outputs are dequantised int8: one step of the output is ~1e-2, a float32 rounding of the last
    # dequantize 1.2e-7.
    assert test["max_abs_error"] <= 2e-7


def test_conv_depthwise_and_matmul_run_integer(built):
    root, _ = built
    ops = fsutil.read_json(_files(root, "cortex-m3", "small-qdq").plan_json)["ops"]
    # The model's input QuantizeLinear runs crtforge_int8_quantize.
    assert ops["integer"] == {"QUANTIZE": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}
    # The bias Add of int8 tensors (onnxruntime's QLinearAdd is not TFLite's ADD), fused with the output
    # dequantize, stays on TVM's float path, and is counted so. The Reshape between the depthwise conv and the
    # MatMul reshapes the int8 tensor (fold_identity_requantize): an alias, no call.
    assert len(ops["tvm_float"]) == 1 and ops["tvm_integer"] == []


def test_uint8_activations_fall_back_to_float_and_say_so(built):
    root, _ = built
    ops = fsutil.read_json(_files(root, "host", "uint8-qdq").plan_json)["ops"]
    assert ops["integer"] == {} and ops["tvm_float"]
    row = next(line for line in (root / "out" / "results.md").read_text().splitlines()
               if line.startswith("| host ") and "| uint8-qdq" in line)
    assert re.search(rf"\| float:{len(ops['tvm_float'])} +\|$", row.rstrip()), row


def test_nchw_convolutions_are_transposed_around_the_kernel(built):
    root, _ = built
    c = _files(root, "host", "convnet-qdq").external_c.read_text()
    # The quantiser folded the ReLU into the output's zero point (-128): the clamp's limits are a ReLU's.
    assert "the model's CONV_2D (1x3x32x32 -> 1x8x32x32 (NCHW), kernel 3x3, stride 1x1, RELU)" in c
    assert "crtforge_int8_transpose((const int8_t*)x0->data, 1, 3, 1024, x_nhwc);" in c
    assert "if (status == 0) crtforge_int8_transpose(y_nhwc, 1, 1024, 8, (int8_t*)y->data);" in c
    # onnxruntime's requantisation: float scales, no TFLite multipliers.
    assert ".scale = convnet_qdq_int8_1_conv2d_scale}" in c and "_multiplier[" not in c
    # The input's QuantizeLinear: x / scale in float32, as onnxruntime divides.
    assert "crtforge_int8_quantize((const float*)x0->data, 3072, convnet_qdq_int8_0_quantize_scale[0], " in c


def test_partition_of_the_bench_qdq_models():
    mlp = int8.partition(load_relax(BENCH / "mlp_qdq.onnx"), "m", rounding=qz.Rounding.ONNXRUNTIME)
    assert [k.op for k in mlp.kernels] == ["QUANTIZE"] + ["FULLY_CONNECTED"] * 3
    # The same model taken with TFLite's rounding would not match onnxruntime: the source format decides.
    from tasks.compile.relax_build import rounding_of
    assert rounding_of(BENCH / "mlp_qdq.onnx") == qz.Rounding.ONNXRUNTIME
    assert rounding_of(BENCH / "mlp_int8.tflite") == qz.Rounding.TFLITE
    convnet = int8.partition(load_relax(BENCH / "convnet_qdq.onnx"), "c", rounding=qz.Rounding.ONNXRUNTIME)
    assert [k.op for k in convnet.kernels] == ["QUANTIZE", "CONV_2D", "CONV_2D", "FULLY_CONNECTED"]


def test_identity_requantisations_around_layout_ops_are_folded():
    """The bench convnet's Transpose and Flatten between conv2 and fc each sit between a DequantizeLinear and a
    QuantizeLinear with the same scale and zero point: they move the int8 tensor, with no float round trip."""
    from tvm import relax

    mod = load_relax(BENCH / "convnet_qdq.onnx")
    folded, moved = int8.fold_identity_requantize(mod)
    assert len(moved) == 2
    layout = [b.value for block in folded["main"].body.blocks for b in block.bindings
              if isinstance(b.value, relax.Call) and b.value.op.name in ("relax.permute_dims", "relax.reshape")
              and b.var.name in moved]
    assert [(c.op.name, str(c.ty.dtype)) for c in layout] == [("relax.permute_dims", "int8"), ("relax.reshape", "int8")]
    assert str(folded["main"]).count("R.dequantize") == str(mod["main"]).count("R.dequantize") - 2
    # Nothing to fold in the MLP: its quantize/dequantize pairs have no layout op between them.
    assert int8.fold_identity_requantize(load_relax(BENCH / "mlp_qdq.onnx"))[1] == {}


def test_qdq_models_are_the_writers_output(tmp_path):
    """The committed QDQ bench models are what qdq_nets writes from the committed float ones."""
    paths = qdq_nets.write_all_qdq(BENCH, tmp_path)
    for name, path in paths.items():
        assert path.read_bytes() == (BENCH / f"{name}.onnx").read_bytes(), name


def test_qdq_models_run_as_written_in_the_reference():
    assert _is_qdq(BENCH / "mlp_qdq.onnx") and not _is_qdq(BENCH / "mlp.onnx")


def test_onnxruntime_scales_are_float32_steps():
    s_in, s_w, s_out = 0.0361806862, np.array([0.00123, 0.5, 1e-4], np.float32), 0.0265571326
    q = qz.onnxruntime_channel_quant(s_in, -4, s_w, s_out, -128)
    expected = (np.float32(s_in) * s_w).astype(np.float32) / np.float32(s_out)
    assert q.scales.dtype == np.float32 and np.array_equal(q.scales, expected)
    assert (q.input_offset, q.output_offset, q.act_min, q.act_max, q.per_channel) == (4, -128, -128, 127, True)


# --- the kernels' float requantisation, through ctypes ---------------------------------------------------


def _fc_float(lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray, q: qz.ChannelQuant) -> np.ndarray:
    ptr = lambda a, t: a.ctypes.data_as(ctypes.POINTER(t))  # noqa: E731
    scales = np.ascontiguousarray(q.scales, np.float32)
    qc = ChannelQuantC(q.input_offset, q.output_offset, q.act_min, q.act_max, None, None, int(q.per_channel), None,
                       ptr(scales, ctypes.c_float))
    b, k = x.shape
    n = w.shape[0]
    packed = qz.pack_weights(w)
    scratch = np.zeros(k, np.int16)
    out = np.zeros(b * n, np.int8)
    rc = lib.crtforge_int8_fully_connected(ctypes.byref(qc), ptr(np.ascontiguousarray(x), ctypes.c_int8), b, k,
                                           ptr(packed, ctypes.c_int8), ptr(bias, ctypes.c_int32), n,
                                           ptr(scratch, ctypes.c_int16), ptr(out, ctypes.c_int8))
    assert rc == 0
    return out.reshape(b, n)


def _onnxruntime_fc(x, w, bias, q: qz.ChannelQuant) -> np.ndarray:
    """onnxruntime's requantisation in numpy float32: rint(fl32(acc) * scale) (half to even), + zero point."""
    acc = (x.astype(np.int64) + q.input_offset) @ w.T.astype(np.int64) + bias
    v = acc.astype(np.float32) * np.resize(q.scales, w.shape[0])
    return np.clip(np.rint(v) + q.output_offset, q.act_min, q.act_max).astype(np.int8)


def test_float_requantisation_rounds_halves_to_even(int8_lib):
    """acc * 0.5 for every int8 input: each odd acc is an exact half, which goes to the even neighbour
    (1.5 -> 2, 2.5 -> 2, -0.5 -> 0), as onnxruntime's MLAS rounds; the ends saturate."""
    x = np.arange(-128, 128, dtype=np.int8).reshape(-1, 1)
    w = np.ones((1, 1), np.int8)
    q = qz.ChannelQuant(0, 3, -128, 127, np.zeros(0, np.int32), np.zeros(0, np.int32), np.array([0.5], np.float32))
    got = _fc_float(int8_lib, x, w, np.zeros(1, np.int32), q)[:, 0].astype(int)
    acc = x[:, 0].astype(int)
    assert got[acc == 3] == 5 and got[acc == 5] == 5 and got[acc == -1] == 3 and got[acc == -3] == 1
    np.testing.assert_array_equal(got, np.clip(np.rint(acc * 0.5) + 3, -128, 127))
    big = qz.ChannelQuant(0, 3, -128, 127, np.zeros(0, np.int32), np.zeros(0, np.int32), np.array([40.0], np.float32))
    assert list(_fc_float(int8_lib, x[[0, -1]], w, np.zeros(1, np.int32), big)[:, 0]) == [-128, 127]


@pytest.mark.parametrize("seed", range(4))
def test_float_requantisation_matches_numpy_float32(int8_lib, seed):
    rng = np.random.default_rng(seed)
    b, k, n = 3, 53, 11
    x = rng.integers(-128, 128, (b, k), dtype=np.int8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    bias = rng.integers(-5000, 5000, n, dtype=np.int32)
    q = qz.onnxruntime_channel_quant(rng.uniform(0.005, 0.05), int(rng.integers(-20, 20)),
                                     10 ** rng.uniform(-4, -1, n), rng.uniform(0.01, 0.2), int(rng.integers(-128, 20)))
    np.testing.assert_array_equal(_fc_float(int8_lib, x, w, bias, q), _onnxruntime_fc(x, w, bias, q))
