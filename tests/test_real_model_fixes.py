"""What real nets bring that our own models did not: a Dropout left in the inference graph and tensor names that
are not C identifiers (an ImageNet ONNX net's 'gpu_0/data_0'). Both used to stop the c backend in TVM's C; both
build and pass on host and host-llvm now, and the model's own names stay in the header and test.json."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_doit, target
from tasks import fsutil
from tasks.frontend.importer import load_relax
from tasks.layout import PipelineFiles


def _dropout_model(path) -> None:
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["gpu_0/data_0", "w"], ["m"]),
             helper.make_node("Dropout", ["m"], ["d"], name="drop"),
             helper.make_node("Relu", ["d"], ["gpu_0/softmax_1"])]
    graph = helper.make_graph(nodes, "dropout",
                              [helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("gpu_0/softmax_1", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_dropout_and_slashed_names_build_and_pass(tmp_path):
    _dropout_model(tmp_path / "dropout.onnx")
    mod = load_relax(tmp_path / "dropout.onnx")
    assert "dropout" not in str(mod) and [str(p.name) for p in mod["main"].params] == ["gpu_0_data_0"]
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[pipeline]\nout = "out"\n[models.dropout]\nsource = "dropout.onnx"\n' + target("host")
                        + target("host-llvm", "llvm"))
    result = run_doit(pipeline, "-n", "2", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name, backend in (("host", "c"), ("host-llvm", "llvm")):
        f = PipelineFiles(tmp_path / "out").pair(name, "dropout", "dropout", backend)
        test = fsutil.read_json(f.test_json)
        assert test["passed"] and list(test["outputs"]) == ["gpu_0/softmax_1"]
        header = f.header.read_text()
        assert "/** [in] 'gpu_0/data_0': float32[1, 16] */" in header and "const float* gpu_0_data_0;" in header
