"""A model with 64 MB of weights builds and passes on the host, with bounded memory: the weights reach the program
as linked data (weights.bin through weights.S), never as C text, so neither the compiler's time nor its memory
grows with them. The model is generated here, not committed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import doit_argv, target
from tasks import fsutil
from tasks.layout import PipelineFiles

DIMS = (2048, 4096, 2048, 10)  # three Gemm layers: 64.1 MB of float32 weights


def _mlp(path, dims, seed: int = 0) -> int:
    """An ONNX MLP (Gemm + Relu, the last without) with random weights; returns the weights' bytes."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, nbytes = [], [], "x", 0
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((a, b), dtype=np.float32) / np.float32(np.sqrt(a))).astype(np.float32)
        bias = (rng.standard_normal(b, dtype=np.float32) * np.float32(0.01)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nbytes += w.nbytes + bias.nbytes
        last = i == len(dims) - 2
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], ["y" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dims[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dims[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # onnxruntime 1.31 reads IR <= 13
    onnx.save(model, str(path))
    return nbytes


def test_64_mb_of_weights_build_and_pass_on_the_host(tmp_path):
    nbytes = _mlp(tmp_path / "large.onnx", DIMS)
    assert nbytes > 64 * 10**6
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('[pipeline]\nout = "out"\n[models.large]\nsource = "large.onnx"\n' + target("host"))
    # A process of its own runs doit, so that its children's peak resident set (RUSAGE_CHILDREN: the largest of doit
    # and everything doit ran, TVM in-process, gcc, as, ld) is this build's alone.
    measure = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", measure, *doit_argv(pipeline, "-n", "1", "test")],
                          capture_output=True, text=True, timeout=600)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    f = PipelineFiles(tmp_path / "out").pair("host", "large", "large", "c")
    assert fsutil.read_json(f.test_json)["passed"] is True
    # The weights are bytes in weights.bin (each tensor 64-byte aligned), and executor.c stays small.
    assert nbytes <= f.weights_bin.stat().st_size < nbytes + 6 * 64
    assert f.executor_c.stat().st_size < 32 * 1024
    peak_kb = int(err.rsplit("peak-rss-kb", 1)[1].split()[0])
    print(f"large model: {nbytes / 1e6:.1f} MB of weights, executor.c {f.executor_c.stat().st_size} B, "
          f"peak RSS {peak_kb / 1024:.0f} MB")
    assert peak_kb < 1024 * 1024  # the goal for 100 MB of weights: under 1 GB
