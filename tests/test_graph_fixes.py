"""Graph fixes before TVM's import: a Keras Flatten as today's TFLite converter writes it (RESHAPE of x by
PACK(STRIDED_SLICE(SHAPE(x)), -1)), which TVM's TFLite frontend refuses, in float and in int8; folded to a
constant shape, it builds and passes on host and host-llvm, and import.json says what was rewritten. The ONNX
form (PyTorch's x.view(x.size(0), -1): Shape, Gather, Unsqueeze, Concat, Reshape) needs no rewrite: TVM's ONNX
frontend folds static shapes itself, which the same test shows."""

from __future__ import annotations

import flatbuffers
import numpy as np
import onnx
import pytest
import tflite
from onnx import TensorProto, helper, numpy_helper
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
from tvm.relax.frontend.tflite import from_tflite

from conftest import run_doit, target
from tasks import fsutil
from tasks.frontend.graph_fixes import fold_static_reshapes
from tasks.layout import PipelineFiles

OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE", "FULLY_CONNECTED")


def flatten_model(int8: bool, seed: int = 0) -> bytes:
    """x [1, 4, 4, 3] -> Keras Flatten (SHAPE, STRIDED_SLICE, PACK, RESHAPE) -> FULLY_CONNECTED to 10."""
    rng = np.random.default_rng(seed)
    model, sub = fb.ModelT(), fb.SubGraphT()
    model.version, model.buffers, sub.tensors, sub.operators = 3, [fb.BufferT()], [], []
    model.operatorCodes = []
    for name in OPS:
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = getattr(fb.BuiltinOperator, name)
        code.version = 1
        model.operatorCodes.append(code)

    def tensor(shape, dtype, data=None, q=None):
        t = fb.TensorT()
        t.shape, t.type, t.name, t.buffer = list(shape), dtype, f"t{len(sub.tensors)}".encode(), 0
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            model.buffers.append(b)
            t.buffer = len(model.buffers) - 1
        if q is not None:
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [float(q[0])], [int(q[1])]
        sub.tensors.append(t)
        return len(sub.tensors) - 1

    def op(name, inputs, outputs, options_type=fb.BuiltinOptions.NONE, options=None):
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = OPS.index(name), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        sub.operators.append(o)

    act = fb.TensorType.INT8 if int8 else fb.TensorType.FLOAT32
    qx, qy = ((0.05, 3), (0.1, -2)) if int8 else (None, None)
    x = tensor((1, 4, 4, 3), act, q=qx)
    shape = tensor((4,), fb.TensorType.INT32)
    sl_begin, sl_end, sl_stride = (tensor((1,), fb.TensorType.INT32, np.array([v], np.int32)) for v in (0, 1, 1))
    batch = tensor((), fb.TensorType.INT32)
    minus_one = tensor((), fb.TensorType.INT32, np.array(-1, np.int32))
    packed = tensor((2,), fb.TensorType.INT32)
    flat = tensor((1, 48), act, q=qx)
    if int8:
        w = tensor((10, 48), fb.TensorType.INT8, rng.integers(-127, 128, (10, 48)).astype(np.int8), q=(0.01, 0))
        b = tensor((10,), fb.TensorType.INT32, rng.integers(-500, 500, 10).astype(np.int32), q=(0.05 * 0.01, 0))
    else:
        w = tensor((10, 48), fb.TensorType.FLOAT32, rng.standard_normal((10, 48)).astype(np.float32))
        b = tensor((10,), fb.TensorType.FLOAT32, rng.standard_normal(10).astype(np.float32))
    y = tensor((1, 10), act, q=qy)
    op("SHAPE", [x], [shape], fb.BuiltinOptions.ShapeOptions, fb.ShapeOptionsT())
    sl = fb.StridedSliceOptionsT()
    sl.shrinkAxisMask = 1
    op("STRIDED_SLICE", [shape, sl_begin, sl_end, sl_stride], [batch], fb.BuiltinOptions.StridedSliceOptions, sl)
    pk = fb.PackOptionsT()
    pk.valuesCount, pk.axis = 2, 0
    op("PACK", [batch, minus_one], [packed], fb.BuiltinOptions.PackOptions, pk)
    op("RESHAPE", [x, packed], [flat], fb.BuiltinOptions.ReshapeOptions, fb.ReshapeOptionsT())
    op("FULLY_CONNECTED", [flat, w, b], [y], fb.BuiltinOptions.FullyConnectedOptions, fb.FullyConnectedOptionsT())
    sub.inputs, sub.outputs = [x], [y]
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_tvm_refuses_the_flatten_and_the_fold_fixes_it(int8):
    data = flatten_model(int8)
    # TVM 0.27: float "Concat expects all input tensors to have the same dtype" (SHAPE gives int32, its PACK
    # int64), int8 "quantized TFLite operators are not supported ... SHAPE".
    with pytest.raises(Exception, match="Concat expects|SHAPE|ShapeExpr"):
        from_tflite(tflite.Model.GetRootAsModel(data, 0))
    fixed = fold_static_reshapes(data)
    assert fixed.rewrites == ("RESHAPE (operator #3): its shape, computed by PACK from static shapes, is now the "
                              "constant [1, 48]",
                              "removed 3 operator(s) that only computed those shapes: #0 SHAPE, #1 STRIDED_SLICE, "
                              "#2 PACK")
    mod = from_tflite(tflite.Model.GetRootAsModel(fixed.data, 0))
    assert "shape_of" not in str(mod)
    assert fold_static_reshapes(fixed.data).rewrites == ()  # nothing left to fold: the bytes stay as they are


def onnx_flatten_model(path) -> None:
    """x [1, 4, 4, 3] -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) -> MatMul to 10."""
    w = np.random.default_rng(0).standard_normal((48, 10)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([0]), "axes"),
             numpy_helper.from_array(np.array([-1]), "minus_one"), numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "flatten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_flatten_models_build_and_pass(tmp_path):
    onnx_flatten_model(tmp_path / "flatten-onnx.onnx")
    models = '[models.flatten-onnx]\nsource = "flatten-onnx.onnx"\n'
    for int8 in (False, True):
        name = "flatten-int8" if int8 else "flatten"
        (tmp_path / f"{name}.tflite").write_bytes(flatten_model(int8))
        models += f'[models.{name}]\nsource = "{name}.tflite"\n'
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[pipeline]\nout = "out"\n' + models + target("host") + target("host-llvm", "llvm"))
    result = run_doit(pipeline, "-n", "2", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = PipelineFiles(tmp_path / "out")
    assert fsutil.read_json(out.model("flatten-onnx").import_json)["rewrites"] == []
    for name in ("flatten", "flatten-int8", "flatten-onnx"):
        if name != "flatten-onnx":
            assert fsutil.read_json(out.model(name).import_json)["rewrites"][0].startswith("RESHAPE (operator #3)")
        for t, backend in (("host", "c"), ("host-llvm", "llvm")):
            test = fsutil.read_json(out.pair(t, name, name.replace("-", "_"), backend).test_json)
            assert test["passed"] and test["reference"] == ("onnxruntime" if name == "flatten-onnx" else "tflm")
    # The int8 one runs on crtforge's integer kernel, the reshape an alias.
    plan = fsutil.read_json(out.pair("host", "flatten-int8", "flatten_int8", "c").plan_json)
    assert plan["ops"]["integer"] == {"FULLY_CONNECTED": 1}
