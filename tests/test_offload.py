"""crtforge's external codegen: real external modules with constants, classified and resolved at codegen."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest

from conftest import CONV2D, CONV2D_DATA, ROOT, SINE, run_doit
from tasks import fsutil
from tasks.compile import relax_build
from tasks.compile.classify import classify, inventory
from tasks.emit.codegen import GeneratedFrom, emit_executor, external_constants, weights_of
from tasks.frontend.importer import load_relax, signature
from tasks.compile.offload import external_modules, pack_dense, partition

CRT = ROOT / "crt"
GEN = GeneratedFrom(model="sine", target="t", source="sine_float.tflite", sha256="0" * 64,
                    tvm_version="0.27.0.post1", header="sine.h")


@pytest.fixture(scope="module")
def dense_lib(tmp_path_factory):
    """crt/src/dense.c built once for the host as a shared library (warning-free), for ctypes."""
    so = tmp_path_factory.mktemp("dense") / "libdense.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I", str(CRT / "include"),
                    "-o", str(so), str(CRT / "src" / "dense.c")], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(so))


@pytest.fixture(scope="module")
def offloaded():
    return relax_build.build(SINE, "sine", {"kind": "c"}, offload=("crtforge_dense",))


def test_partition_offloads_every_dense_with_bias():
    mods, constants = external_modules(partition(load_relax(SINE), "sine", ("crtforge_dense",)).mod)
    assert len(mods) == 3  # dense 1-16-16-1
    for m in mods:
        [name] = m.get_function("get_func_names")()
        assert m.kind == "c" and name.startswith("sine_")
        assert len(m.get_function("get_const_vars")()) == 2
        assert f"int32_t __tvm_ffi_{name}(" in m.inspect_source()
    named = {str(n) for m in mods for n in m.get_function("get_const_vars")()}
    assert named <= set(constants)
    # The modules name the weights packed (1x16, 16x16, 16x1) and the biases (16, 16, 1).
    assert sorted(constants[n].shape for n in named) == [(1,), (16,), (16,), (16,), (16,), (256,)]
    assert sum(n.endswith("_packed_weights") for n in named) == 3


def test_a_target_can_offload_one_op_family():
    """`crtforge_dense.dense` leaves convolutions to TVM, in the model's own layout (no NHWC transposes), and
    `crtforge_dense.conv2d` leaves the dense layers; `crtforge_dense` takes both."""
    sine, conv = load_relax(SINE), load_relax(CONV2D)
    assert [len(partition(sine, "sine", (c,)).functions) for c in ("crtforge_dense", "crtforge_dense.dense",
                                                                   "crtforge_dense.conv2d")] == [3, 3, 0]
    dense_only = partition(conv, "conv2d", ("crtforge_dense.dense",))
    assert dense_only.functions == {} and "permute_dims" not in str(dense_only.mod)
    [name] = partition(conv, "conv2d", ("crtforge_dense.conv2d",)).functions
    assert "conv2d" in name


def test_pack_dense_blocks_output_columns():
    w = np.arange(3 * 19, dtype=np.float32).reshape(3, 19)
    p = pack_dense(w)
    assert p.shape == (57,) and p.dtype == np.float32
    np.testing.assert_array_equal(p[:24].reshape(3, 8), w[:, :8])    # first block: [k][8]
    np.testing.assert_array_equal(p[24:48].reshape(3, 8), w[:, 8:16])
    np.testing.assert_array_equal(p[48:].reshape(3, 3), w[:, 16:])   # the narrower last block: [k][3]


# Every width of the last block (n % 8: 1 to 7), and none.
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 16, 8), (2, 37, 19), (3, 256, 10), (2, 33, 40), (1, 64, 77),
                                   (2, 5, 4), (1, 9, 14), (3, 7, 15)])
def test_dense_kernel_equals_numpy(dense_lib, m, k, n):
    rng = np.random.default_rng(k * n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    y = np.zeros((m, n), np.float32)
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    dense_lib.crtforge_dense_f32(ptr(x), ptr(pack_dense(w)), ptr(b), ptr(y), m, k, n)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-5)


class ConvShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "batches", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h", "kernel_w", "stride_h", "stride_w",
        "dilation_h", "dilation_w", "pad_top", "pad_left", "nchw", "relu")]


@pytest.mark.parametrize("h,w,c,k,stride,dilation,pads,relu", [
    (5, 6, 4, 3, 1, 1, (1, 1, 1, 1), 0), (7, 9, 14, 3, 2, 1, (1, 0, 1, 1), 1), (6, 6, 3, 5, 1, 2, (4, 4, 4, 4), 0),
    (4, 4, 9, 1, 1, 1, (0, 0, 0, 0), 1)])
def test_depthwise_kernel_equals_numpy(dense_lib, h, w, c, k, stride, dilation, pads, relu):
    rng = np.random.default_rng(h * c + k)
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    f = rng.standard_normal((k, k, c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    top, left, bottom, right = pads
    span = (k - 1) * dilation + 1
    oh, ow = (h + top + bottom - span) // stride + 1, (w + left + right - span) // stride + 1
    padded = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    want = np.zeros((2, oh, ow, c)) + b
    for ky in range(k):
        for kx in range(k):
            y0, x0 = ky * dilation, kx * dilation
            want += padded[:, y0:y0 + stride * (oh - 1) + 1:stride, x0:x0 + stride * (ow - 1) + 1:stride, :] * f[ky, kx]
    if relu:
        want = np.maximum(want, 0)
    y = np.full((2, oh, ow, c), np.nan, np.float32)
    shape = ConvShape(2, h, w, c, oh, ow, c, k, k, stride, stride, dilation, dilation, top, left, 0, relu)
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    assert dense_lib.crtforge_depthwise_f32(ctypes.byref(shape), ptr(x), ptr(f), ptr(b), ptr(y)) == 0
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    shape.nchw = 1
    assert dense_lib.crtforge_depthwise_f32(ctypes.byref(shape), ptr(x), ptr(f), ptr(b), ptr(y)) == -1


def test_a_convolution_with_bias_is_offloaded_with_packed_weights():
    offloaded = partition(load_relax(CONV2D), "conv2d", ("crtforge_dense",))
    mods, constants = external_modules(offloaded.mod)
    [m] = mods
    [name] = m.get_function("get_func_names")()
    src = m.inspect_source()
    # The ONNX (NCHW) convolution runs NHWC: ConvertLayout puts transposes at its edges, which TVM's kernels do.
    assert "crtforge_conv2d_f32(&" in src and ".nchw = 0," in src and ".relu = 0," in src
    packed = f"{name}_packed_weights"
    assert packed in [str(n) for n in m.get_function("get_const_vars")()]
    # One output row's columns (kernel_h * kernel_w * in_c floats a pixel) and outputs, padded to 16 bytes.
    shape = {k.lstrip("."): int(v) for k, v in (line.strip(" ,").split(" = ") for line in src.splitlines()
                                      if line.strip().startswith(".") and " = " in line and "{" not in line)}
    column = shape["kernel_h"] * shape["kernel_w"] * shape["in_c"]
    assert offloaded.workspace == {name: -(-4 * shape["out_w"] * (column + shape["out_c"]) // 16) * 16}
    assert constants[packed].shape == (column * shape["out_c"],)


def test_external_modules_are_classified_dso_with_constants(offloaded):
    cls = classify(inventory(offloaded.runtime_module))
    assert cls.counts() == {"dso": 1, "dso+constants": 3}
    offloaded_names = {f for v in cls.modules if v.verdict == "dso+constants" for f in v.record.functions}
    assert offloaded_names <= set(cls.registry_functions)
    assert offloaded_names <= {c.kernel for c in offloaded.plan.calls}  # the plan calls them directly
    assert not any("matmul" in k and "crtforge" not in k for k in offloaded.plan.kernels)


def test_constants_are_resolved_into_linked_data(offloaded):
    cls = classify(inventory(offloaded.runtime_module))
    consts = external_constants(cls, offloaded.params)
    assert len(consts) == 6
    sig = signature(load_relax(SINE), SINE)
    weights = weights_of(offloaded.plan, offloaded.params, cls, "sine", GEN)
    text = emit_executor(offloaded.plan, weights, sig, "sine", GEN)
    assert "resolved here at build time" in text
    for c in weights.external:
        # Under the module's own name (its C declares it extern), as a symbol of weights.S over the blob.
        assert f"extern const float {c['name']}[{c['size']}];" in text
        assert f"{c['name']}:\n  .incbin \"weights.bin\", {c['offset']}, {c['nbytes']}" in weights.asm
        data = np.frombuffer(weights.blob[c["offset"]:c["offset"] + c["nbytes"]], np.float32)
        np.testing.assert_array_equal(data, offloaded.params[c["name"]].reshape(-1))


def test_no_constant_table_when_no_module_needs_one():
    plain = relax_build.build(SINE, "sine", {"kind": "c"})
    cls = classify(inventory(plain.runtime_module))
    assert external_constants(cls, plain.params) == []
    weights = weights_of(plain.plan, plain.params, cls, "sine", GEN)
    text = emit_executor(plain.plan, weights, signature(load_relax(SINE), SINE), "sine", GEN)
    assert "external modules need" not in text and "const_loader" not in text


def conv_relu_model(path) -> None:
    """Conv 3x3 of 5 to 14 channels (a block of 8 and a narrower one of 6) + ReLU on a 7x9 NCHW input: 9 pixels
    a row, so Cortex-M4F's two-pixel kernel also leaves one pixel alone. Then a depthwise 3x3, stride 2, with
    asymmetric padding: 14 channels are three groups of 4 and a remainder of 2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(rng.standard_normal((14, 5, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(14).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((14, 1, 3, 3)).astype(np.float32), "dw"),
             numpy_helper.from_array(rng.standard_normal(14).astype(np.float32), "db")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "dw", "db"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 1, 1], strides=[2, 2],
                              group=14)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 7, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 14, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_offload_builds_and_passes_on_host_and_cortex_m4(write_pipeline, tmp_path):
    conv_relu_model(tmp_path / "conv12.onnx")
    pipeline = write_pipeline(
        f'[models.sine]\nsource = "{SINE}"\n'
        f'[models.conv12]\nsource = "{tmp_path / "conv12.onnx"}"\n'
        f'[models.conv2d]\nsource = "{CONV2D}"\nexpected = "{CONV2D_DATA}"\n'
        '[targets.host-offload]\nbackend = "c"\ntoolchain = "host-gcc"\noffload = ["crtforge_dense"]\n'
        '[targets.m4-offload]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n'
        'offload = ["crtforge_dense"]\n')
    result = run_doit(pipeline, "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.count("dso:1 dso+constants:3") == 2
    # The convolutions through crtforge_conv2d_f32, against the onnx package's data and onnxruntime.
    for target in ("host-offload", "m4-offload"):
        for model in ("conv2d", "conv12"):
            d = tmp_path / "out" / target / model
            assert fsutil.read_json(d / "test.json")["passed"] is True, (target, model)
            assert "crtforge_conv2d_f32(&" in (d / "external.c").read_text()
    conv12 = (tmp_path / "out" / "m4-offload" / "conv12" / "external.c").read_text()
    assert ".relu = 1," in conv12 and "crtforge_depthwise_f32(&" in conv12
    assert conv12.count("__tvm_ffi_conv12_") == 2 and ".nchw = 0," in conv12  # both NHWC after ConvertLayout
    for target in ("host-offload", "m4-offload"):
        d = tmp_path / "out" / target / "sine"
        assert fsutil.read_json(d / "test.json")["passed"] is True
        cls = fsutil.read_json(d / "classification.json")
        offloaded = [f for m in cls["modules"] if m["verdict"] == "dso+constants" for f in m["functions"]]
        assert len(offloaded) == 3 and set(offloaded) <= set(cls["registry"])
        # the program walked the whole registry, offloaded functions included
        assert f"crtforge-registry {len(cls['registry'])}\n" in (d / "run.log").read_text()
        assert "crtforge_dense_f32(" in (d / "external.c").read_text()
