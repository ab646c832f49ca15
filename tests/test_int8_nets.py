"""The int8 benchmark networks of tasks/bench/int8_nets.py: they run in TFLM, track the float network, follow
TFLite's full-integer quantisation scheme, import into TVM, and are written deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from tasks.bench import int8_nets
from tasks.bench.measure import BenchError, tflm_arena_bytes

# Max |TFLM dequantised - float| over the test inputs, as a fraction of the float output range seen in
# calibration. Observed: ~0.5 % for the MLP (3 layers), ~2 % for DS-CNN (11 quantised layers, and the pool
# output only uses half of int8 because it must keep its input's scale); the bounds leave about 2x margin.
TOLERANCE = {"mlp_int8": 0.01, "dscnn_int8": 0.04}
OUTPUT_SHAPE = {"mlp_int8": (1, 10), "dscnn_int8": (1, 12)}
WEIGHTED_OPS = {fb.BuiltinOperator.FULLY_CONNECTED, fb.BuiltinOperator.CONV_2D,
                fb.BuiltinOperator.DEPTHWISE_CONV_2D}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    return int8_nets.write_all_int8(tmp_path_factory.mktemp("int8_nets"))


def _quant(details: dict) -> tuple[float, int]:
    q = details["quantization_parameters"]
    return float(q["scales"][0]), int(q["zero_points"][0])


def _test_inputs(net: int8_nets.FloatNet, n: int) -> np.ndarray:
    # Another seed than calibration's: these inputs were not used to choose the scales.
    rng = np.random.default_rng(1234)
    shape = (n,) + net.input_shape  # n inputs of batch 1
    return rng.uniform(-1.0, 1.0, shape) if net.name == "mlp_int8" else rng.standard_normal(shape)


@pytest.mark.parametrize("name", int8_nets.NETWORKS)
def test_tflm_output_tracks_float_network(paths, name):
    from tflite_micro.python.tflite_micro import runtime

    net = int8_nets.float_net(name)
    interp = runtime.Interpreter.from_bytes(paths[name].read_bytes())
    s_in, zp_in = _quant(interp.get_input_details(0))
    s_out, zp_out = _quant(interp.get_output_details(0))
    calib_out = int8_nets.float_forward(net, int8_nets.calibration_inputs(net))
    out_range = float(calib_out.max() - calib_out.min())
    errors = []
    for x in _test_inputs(net, 8):
        xq = np.clip(np.round(x / s_in) + zp_in, -128, 127).astype(np.int8)
        interp.set_input(xq, 0)
        interp.invoke()
        y = interp.get_output(0)
        assert y.dtype == np.int8 and y.shape == OUTPUT_SHAPE[name]
        assert len(np.unique(y)) > 1, "all outputs equal: quantisation collapsed them"
        # Reference: the float network on the very input the int8 model saw, so only the network's
        # quantisation error is measured.
        ref = int8_nets.float_forward(net, (xq.astype(np.float64) - zp_in) * s_in)
        errors.append(np.abs((y.astype(np.float64) - zp_out) * s_out - ref).max() / out_range)
    assert max(errors) <= TOLERANCE[name], f"{name}: errors / output range {np.round(errors, 4)}"


@pytest.mark.parametrize("name", int8_nets.NETWORKS)
def test_quantisation_follows_tflite_scheme(paths, name):
    import tflite

    data = paths[name].read_bytes()
    model = fb.ModelT.InitFromPackedBuf(data, 0)
    sg = model.subgraphs[0]
    tensors = sg.tensors

    def buffer(t: fb.TensorT, dtype) -> np.ndarray:
        return np.frombuffer(bytes(model.buffers[t.buffer].data), dtype=dtype)

    n_weighted = 0
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex].builtinCode
        x, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        if code in WEIGHTED_OPS:
            n_weighted += 1
            w, b = tensors[op.inputs[1]], tensors[op.inputs[2]]
            assert w.type == fb.TensorType.INT8 and b.type == fb.TensorType.INT32
            assert not any(w.quantization.zeroPoint) and not any(b.quantization.zeroPoint)
            w_scales = np.array(w.quantization.scale, np.float32)
            if code == fb.BuiltinOperator.FULLY_CONNECTED:
                assert len(w_scales) == 1
                axis = None
            else:
                axis = 3 if code == fb.BuiltinOperator.DEPTHWISE_CONV_2D else 0
                assert w.quantization.quantizedDimension == axis
                assert len(w_scales) == w.shape[axis] == out.shape[3]
            # Symmetric: -128 unused, and each scale is max|w| / 127, so every channel reaches +-127.
            values = buffer(w, np.int8).reshape(w.shape)
            assert values.min() >= -127
            rows = values.reshape(1, -1) if axis is None else np.moveaxis(values, axis, 0).reshape(len(w_scales), -1)
            assert (np.abs(rows.astype(np.int32)).max(axis=1) == 127).all()
            s_in = np.float32(x.quantization.scale[0])
            np.testing.assert_allclose(b.quantization.scale, s_in * w_scales, rtol=1e-6)
            assert len(buffer(b, np.int32)) == b.shape[0]
        if code in (fb.BuiltinOperator.AVERAGE_POOL_2D, fb.BuiltinOperator.RESHAPE):
            assert out.quantization.scale == x.quantization.scale
            assert out.quantization.zeroPoint == x.quantization.zeroPoint
        if code == fb.BuiltinOperator.RESHAPE:
            shape_t = tensors[op.inputs[1]]
            assert shape_t.type == fb.TensorType.INT32 and list(buffer(shape_t, np.int32)) == [1, 64]
            assert list(op.builtinOptions.newShape) == [1, 64]
        assert x.type == out.type == fb.TensorType.INT8
    assert n_weighted == (3 if name == "mlp_int8" else 10)

    # Constant payloads start 16-byte aligned (int32 biases are read in place).
    m = tflite.Model.GetRootAsModel(data, 0)
    base = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    for i in range(1, m.BuffersLength()):
        payload = m.Buffers(i).DataAsNumpy()
        assert (payload.__array_interface__["data"][0] - base) % int8_nets.BUFFER_ALIGN == 0


def test_macs():
    assert int8_nets.macs_int8("mlp_int8") == 256 * 512 + 512 * 512 + 512 * 10
    assert 2.6e6 <= int8_nets.macs_int8("dscnn_int8") <= 2.7e6
    with pytest.raises(ValueError):
        int8_nets.macs_int8("nope")


def test_tflm_arena_bytes(paths, tmp_path):
    arenas = {name: tflm_arena_bytes(p) for name, p in paths.items()}
    for name, n in arenas.items():
        assert isinstance(n, int) and n > 0, name
    # DS-CNN holds two [1,25,5,64] activations (16000 bytes) at once; the MLP never more than 1024 bytes.
    assert arenas["dscnn_int8"] > 16000 > arenas["mlp_int8"]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(BenchError, match="Arena allocation total"):
        tflm_arena_bytes(bad)


def test_writing_is_deterministic(paths, tmp_path):
    again = int8_nets.write_all_int8(tmp_path / "again")
    other_seed = int8_nets.write_all_int8(tmp_path / "seed1", seed=1)
    for name in int8_nets.NETWORKS:
        assert again[name].read_bytes() == paths[name].read_bytes(), name
        assert other_seed[name].read_bytes() != paths[name].read_bytes(), name


@pytest.mark.parametrize("name", int8_nets.NETWORKS)
def test_tvm_imports(paths, name):
    import tflite
    from tvm.relax.frontend.tflite import from_tflite

    mod = from_tflite(tflite.Model.GetRootAsModel(paths[name].read_bytes(), 0))
    main = mod["main"]
    # int8 in and out: TVM kept the quantised interface (it lowers the ops inside to dequantize/quantize).
    assert [str(p.ty.dtype) for p in main.params] == ["int8"]
    assert str(main.ret_ty.dtype) == "int8"
