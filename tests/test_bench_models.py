"""The benchmark models: ONNX and TFLite files compute the same function in every runtime.

For each network, one seeded input goes through a numpy reference (computed straight from the
weights, in float64), onnxruntime (single thread), the TFLM interpreter, and the TVM Relax VM on
both imported files; all must agree within rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so `bench` imports however pytest is started
    sys.path.insert(0, str(ROOT))

from tasks.bench import models  # noqa: E402

RTOL = 1e-4
ATOL = 1e-5
SEED = 0
INPUT_SEED = 1234


# ---------------------------------------------------------------------------------------------
# numpy reference, written independently of the file writers
# ---------------------------------------------------------------------------------------------


def _dense(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ w.astype(np.float64).T + b


def _conv_nhwc(x: np.ndarray, w_oihw: np.ndarray, b: np.ndarray, stride: int,
               pads: tuple[int, int]) -> np.ndarray:
    """Conv2D on NHWC with (before, after) zero padding on both spatial axes."""
    k = w_oihw.shape[2]
    xp = np.pad(x, ((0, 0), pads, pads, (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    # win: [n, oh, ow, c, kh, kw]
    return np.einsum("nhwcij,ocij->nhwo", win, w_oihw.astype(np.float64)) + b


def reference(name: str, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """float64 reference output; x is [1,256] (mlp) or NHWC [1,32,32,3] (convnet)."""
    x = x.astype(np.float64)
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    if name == "mlp":
        h = relu(_dense(x, weights["fc1.weight"], weights["fc1.bias"]))
        h = relu(_dense(h, weights["fc2.weight"], weights["fc2.bias"]))
        return _dense(h, weights["fc3.weight"], weights["fc3.bias"])
    # TFLite SAME: stride 1 pads (1, 1); stride 2 on 32 pads (0, 1), the odd pixel at the end.
    h = relu(_conv_nhwc(x, weights["conv1.weight"], weights["conv1.bias"], 1, (1, 1)))
    h = relu(_conv_nhwc(h, weights["conv2.weight"], weights["conv2.bias"], 2, (0, 1)))
    assert h.shape == (1, 16, 16, 16)
    return _dense(h.reshape(1, -1), weights["fc.weight"], weights["fc.bias"])


# ---------------------------------------------------------------------------------------------
# runtimes
# ---------------------------------------------------------------------------------------------


def run_onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run_tflm(path: Path, x: np.ndarray) -> np.ndarray:
    from tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(path))
    interp.set_input(x, 0)
    interp.invoke()
    return np.array(interp.get_output(0))


def import_tvm(path: Path):
    import onnx
    import tflite
    from tvm.relax.frontend import onnx as ronnx
    from tvm.relax.frontend import tflite as rtfl

    if path.suffix == ".onnx":
        return ronnx.from_onnx(onnx.load(str(path)))
    return rtfl.from_tflite(tflite.Model.GetRootAsModel(path.read_bytes(), 0))


def run_tvm(path: Path, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    ex = relax.build(import_tvm(path), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


# ---------------------------------------------------------------------------------------------
# fixtures and tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, dict[str, Path]]:
    return models.write_all(tmp_path_factory.mktemp("bench_models"), seed=SEED)


WEIGHTS = {"mlp": models.mlp_weights, "convnet": models.convnet_weights}


def _inputs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(TFLite-layout input, ONNX-layout input) for the same data."""
    rng = np.random.default_rng(INPUT_SEED)
    if name == "mlp":
        x = rng.uniform(-1, 1, size=(1, 256)).astype(np.float32)
        return x, x
    x = rng.uniform(-1, 1, size=(1, 32, 32, 3)).astype(np.float32)
    return x, np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW


@pytest.fixture(scope="module")
def outputs(written) -> dict[str, dict[str, np.ndarray]]:
    res: dict[str, dict[str, np.ndarray]] = {}
    for name in models.NETWORKS:
        x_tfl, x_onnx = _inputs(name)
        p = written[name]
        res[name] = {
            "numpy": reference(name, WEIGHTS[name](SEED), x_tfl),
            "onnxruntime": run_onnxruntime(p["onnx"], x_onnx),
            "tflm": run_tflm(p["tflite"], x_tfl),
            "tvm-onnx": run_tvm(p["onnx"], x_onnx),
            "tvm-tflite": run_tvm(p["tflite"], x_tfl),
        }
    return res


def test_macs():
    assert models.macs("mlp") == 398336
    # 32*32*8*27 + 16*16*16*72 + 4096*10
    assert models.macs("convnet") == 221184 + 294912 + 40960
    with pytest.raises(ValueError):
        models.macs("nope")


def test_weights_deterministic():
    for fn in WEIGHTS.values():
        a, b, c = fn(3), fn(3), fn(4)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == np.float32
            np.testing.assert_array_equal(a[k], b[k])
        assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_files_written(written):
    import onnx
    import tflite

    assert sorted(p.name for p in written["mlp"].values()) == ["mlp.onnx", "mlp.tflite"]
    for name in models.NETWORKS:
        onnx.checker.check_model(onnx.load(str(written[name]["onnx"])), full_check=True)
        buf = written[name]["tflite"].read_bytes()
        assert buf[4:8] == b"TFL3"
        m = tflite.Model.GetRootAsModel(buf, 0)
        assert m.Version() == 3
        assert m.Buffers(0).DataLength() == 0  # the empty sentinel
        # no temp files left behind
        assert sorted(q.name for q in written[name]["onnx"].parent.iterdir()
                      if q.name.startswith(".")) == []


def test_identical_weights(written):
    """The TFLite constants are the ONNX initializers (conv filters transposed OIHW -> OHWI)."""
    import onnx
    import tflite
    from onnx import numpy_helper

    for name in models.NETWORKS:
        inits = {t.name: numpy_helper.to_array(t)
                 for t in onnx.load(str(written[name]["onnx"])).graph.initializer}
        m = tflite.Model.GetRootAsModel(written[name]["tflite"].read_bytes(), 0)
        sg = m.Subgraphs(0)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            tname = t.Name().decode()
            if tname not in inits:
                continue
            data = m.Buffers(t.Buffer()).DataAsNumpy().view(np.float32).reshape(t.ShapeAsNumpy())
            expect = inits[tname]
            if expect.ndim == 4:
                expect = expect.transpose(0, 2, 3, 1)
            np.testing.assert_array_equal(data, expect, err_msg=f"{name}: {tname}")


@pytest.mark.parametrize("name", models.NETWORKS)
def test_runtimes_agree(outputs, name):
    out = outputs[name]
    ref = out["numpy"]
    assert ref.shape == (1, 10)
    assert 0.05 < np.abs(ref).max() < 20  # O(1) outputs: the tolerances mean something
    for runtime in ("onnxruntime", "tflm", "tvm-onnx", "tvm-tflite"):
        got = out[runtime]
        assert got.shape == (1, 10), runtime
        assert got.dtype == np.float32, runtime
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {runtime} vs numpy")
    np.testing.assert_allclose(out["tflm"], out["onnxruntime"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["tvm-onnx"], out["tvm-tflite"], rtol=RTOL, atol=ATOL)
    diffs = {r: float(np.abs(out[r].astype(np.float64) - ref).max())
             for r in ("onnxruntime", "tflm", "tvm-onnx", "tvm-tflite")}
    print(f"{name}: max abs diff vs numpy float64 reference: {diffs}")
