"""Each kernel call names the source model's ops it computes (ONNX nodes, TFLite operators), through fusion,
the int8 and offload partitions, and the debug profile's one kernel per op."""

from __future__ import annotations

import pytest

from conftest import SINE
from tasks.compile import relax_build
from tasks.emit.codegen import comment_text
from tasks.frontend.importer import load_relax_with_sources
from test_qdq import BENCH


def sources(model, **options) -> list[list[str]]:
    return [c.source_ops for c in relax_build.build(model, "m", {"kind": "c"}, **options).plan.calls]


def test_fused_onnx_kernels_name_their_nodes():
    assert sources(BENCH / "convnet.onnx") == [['Conv "conv1"', 'Relu "relu1"'], ['Conv "conv2"', 'Relu "relu2"'],
                                               ['Transpose "to_nhwc"', 'Flatten "flatten"'], ['Gemm "fc"']]


def test_tflite_kernels_name_their_operator_indices():
    # Operator 2 (RESHAPE) runs as no call: lowering makes it a view of its input.
    assert sources(BENCH / "convnet.tflite") == [["CONV_2D (operator 0)"], ["CONV_2D (operator 1)"],
                                                 ["FULLY_CONNECTED (operator 3)"]]


def test_int8_and_offloaded_functions_name_their_ops():
    dscnn = sources(BENCH / "dscnn_int8.tflite")
    assert dscnn[:2] == [["CONV_2D (operator 0)"], ["DEPTHWISE_CONV_2D (operator 1)"]]
    assert dscnn[-2:] == [["AVERAGE_POOL_2D (operator 9)"], ["FULLY_CONNECTED (operator 11)"]]
    # QDQ: the quantise and dequantise nodes around a Conv are how it is quantised; the Conv is what it computes.
    assert sources(BENCH / "convnet_qdq.onnx")[1:3] == [['Conv "conv1"'], ['Conv "conv2"']]
    assert sources(BENCH / "mlp.tflite", offload=("crtforge_dense",)) == [
        ["FULLY_CONNECTED (operator 0)"]] * 2 + [["FULLY_CONNECTED (operator 1)"]] * 2 + [["FULLY_CONNECTED (operator 2)"]]


def test_debug_kernels_name_the_op_each_came_from():
    # matmul, add and relu of each dense layer: three kernels per operator but the last (no relu).
    assert sources(SINE, profile="debug") == [[f"FULLY_CONNECTED (operator {i})"] for i in (0, 0, 0, 1, 1, 1, 2, 2)]


def test_unnamed_and_hostile_node_names(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"], name="end */ here\n")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    _, found = load_relax_with_sources(path)
    assert sorted(set(found.by_binding.values())) == ['Relu (node 0)', 'Sigmoid "end */ here\n"']
    assert comment_text('Sigmoid "end */ here\n"') == 'Sigmoid "end *\\/ here?"'
    assert [c.source_ops for c in relax_build.build(path, "m", {"kind": "c"}, profile="debug").plan.calls] == [
        ["Relu (node 0)"], ['Sigmoid "end */ here\n"']]


@pytest.mark.parametrize("model", ["convnet.onnx", "convnet.tflite"])
def test_every_binding_of_the_import_has_a_source_op(model):
    mod, found = load_relax_with_sources(BENCH / model)
    bindings = [b.var.name for block in mod["main"].body.blocks for b in block.bindings]
    assert bindings and all(name in found.by_binding for name in bindings)
