"""Benchmark networks written by our own code, as ONNX and as TFLite with identical float32 weights.

Two networks:

* ``mlp``: [1,256] -> FC(512)+ReLU -> FC(512)+ReLU -> FC(10).
* ``convnet``: [1,32,32,3] NHWC (TFLite) / [1,3,32,32] NCHW (ONNX)
  -> Conv3x3(3->8, stride 1, SAME)+ReLU -> Conv3x3(8->16, stride 2, SAME)+ReLU -> flatten -> FC(10).

Both files of a network compute the same function, so onnxruntime, TFLM and the TVM pipeline can be
compared on one input (transposed NHWC -> NCHW for the ONNX convnet).

Weight conventions (the dict returned by ``*_weights``):

* dense ``*.weight`` is [out, in]: that is TFLite's FULLY_CONNECTED layout and ONNX ``Gemm`` with
  ``transB=1``, so both files store the very same array.
* conv ``*.weight`` is OIHW (ONNX); the TFLite writer transposes it to TFLite's OHWI.
* ``fc.weight`` of the convnet is indexed in NHWC flatten order (h, w, c); the ONNX graph transposes
  NCHW -> NHWC before ``Flatten`` so both files flatten in the same order.

Padding: TFLite can only say SAME or VALID. SAME with stride 2 on an even input pads 0 before and 1
after (TensorFlow puts the odd pad at the end), which is *not* ONNX's symmetric ``pads=1``: the ONNX
graph therefore uses explicit ``pads=[0,0,1,1]`` for the stride-2 conv (and [1,1,1,1] for stride 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import fsutil

MLP_SIZES: tuple[int, ...] = (256, 512, 512, 10)

CONV_IN_HWC: tuple[int, int, int] = (32, 32, 3)
CONV1_OUT: int = 8
CONV2_OUT: int = 16
CONV_K: int = 3
CONV2_STRIDE: int = 2
CONV_CLASSES: int = 10
# Spatial size after the stride-2 SAME conv: ceil(32 / 2).
CONV2_HW: int = -(-CONV_IN_HWC[0] // CONV2_STRIDE)
CONV_FLAT: int = CONV2_HW * CONV2_HW * CONV2_OUT  # 4096

ONNX_OPSET: int = 13
# IR 8 is what opset 13 tools produce; a modest IR version keeps older readers (and TVM) happy.
ONNX_IR_VERSION: int = 8
TFLITE_SCHEMA_VERSION: int = 3
TFLITE_FILE_ID: bytes = b"TFL3"
# TFLite's converter aligns constant buffers to 16 bytes; TFLM and TVM read float data in place.
TFLITE_BUFFER_ALIGN: int = 16

NETWORKS: tuple[str, ...] = ("mlp", "convnet")


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _he_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    # He-uniform keeps activations O(1) through ReLU layers.
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    # Non-zero biases so that a dropped bias shows up in the comparisons.
    return rng.uniform(-0.1, 0.1, size=(n,)).astype(np.float32)


def mlp_weights(seed: int) -> dict[str, np.ndarray]:
    """Deterministic MLP weights: ``fc{i}.weight`` [out, in] and ``fc{i}.bias`` [out], float32."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for i, (n_in, n_out) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:]), start=1):
        weights[f"fc{i}.weight"] = _he_uniform(rng, (n_out, n_in), n_in)
        weights[f"fc{i}.bias"] = _bias(rng, n_out)
    return weights


def convnet_weights(seed: int) -> dict[str, np.ndarray]:
    """Deterministic convnet weights: conv OIHW, ``fc.weight`` [10, 4096] in NHWC flatten order."""
    rng = np.random.default_rng(seed)
    c_in = CONV_IN_HWC[2]
    k = CONV_K
    return {
        "conv1.weight": _he_uniform(rng, (CONV1_OUT, c_in, k, k), c_in * k * k),
        "conv1.bias": _bias(rng, CONV1_OUT),
        "conv2.weight": _he_uniform(rng, (CONV2_OUT, CONV1_OUT, k, k), CONV1_OUT * k * k),
        "conv2.bias": _bias(rng, CONV2_OUT),
        "fc.weight": _he_uniform(rng, (CONV_CLASSES, CONV_FLAT), CONV_FLAT),
        "fc.bias": _bias(rng, CONV_CLASSES),
    }


def macs(name: str) -> int:
    """Multiply-accumulates of one inference of network ``name`` (biases and ReLUs not counted)."""
    if name == "mlp":
        return sum(a * b for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
    if name == "convnet":
        h, w, c_in = CONV_IN_HWC
        k2 = CONV_K * CONV_K
        conv1 = h * w * CONV1_OUT * c_in * k2  # stride 1, SAME: output is h x w
        conv2 = CONV2_HW * CONV2_HW * CONV2_OUT * CONV1_OUT * k2
        return conv1 + conv2 + CONV_FLAT * CONV_CLASSES
    raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after): the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


# ---------------------------------------------------------------------------------------------
# Atomic file writing
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------


def _onnx_save(path: Path, nodes: list, inits: dict[str, np.ndarray], x_shape: list[int],
               y_shape: list[int], name: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        name,
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k)
                     for k, v in inits.items()],
    )
    model = helper.make_model(graph, producer_name="crtforge-bench",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    fsutil.write_bytes(Path(path), model.SerializeToString())


def write_onnx_mlp(path: Path, weights: dict[str, np.ndarray]) -> None:
    """ONNX MLP: Gemm(transB=1) keeps the [out, in] weights exactly as TFLite stores them."""
    from onnx import helper

    n_layers = len(MLP_SIZES) - 1
    nodes = []
    cur = "x"
    for i in range(1, n_layers + 1):
        out = "y" if i == n_layers else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [out],
                                      name=f"fc{i}", transB=1))
        if i < n_layers:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            out = f"relu{i}"
        cur = out
    _onnx_save(Path(path), nodes, weights, [1, MLP_SIZES[0]], [1, MLP_SIZES[-1]], "mlp")


def write_onnx_convnet(path: Path, weights: dict[str, np.ndarray]) -> None:
    """ONNX convnet, NCHW, with explicit pads equal to TFLite's SAME and an NHWC flatten."""
    from onnx import helper

    h, w, c = CONV_IN_HWC
    k = CONV_K
    p1 = _same_pads(h, k, 1)
    p2 = _same_pads(h, k, CONV2_STRIDE)
    # ONNX pads are [h_begin, w_begin, h_end, w_end]; square input, so h and w pads agree.
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1",
                         kernel_shape=[k, k], strides=[1, 1], pads=[p1[0], p1[0], p1[1], p1[1]]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2",
                         kernel_shape=[k, k], strides=[CONV2_STRIDE, CONV2_STRIDE],
                         pads=[p2[0], p2[0], p2[1], p2[1]]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        # NCHW -> NHWC so Flatten yields TFLite's (h, w, c) order and fc.weight is shared as is.
        helper.make_node("Transpose", ["relu2"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["nhwc"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    _onnx_save(Path(path), nodes, weights, [1, c, h, w], [1, CONV_CLASSES], "convnet")


# ---------------------------------------------------------------------------------------------
# TFLite (flatbuffer written with the generated schema of the `tflite` package)
# ---------------------------------------------------------------------------------------------
#
# A graph is described by plain data and serialized by _tflite_bytes:
#   tensors:   list of (name, shape, np.dtype, constant data or None)
#   operators: list of (builtin operator code, input indices, output indices, options builder)
# where an options builder is (BuiltinOptions type, fn(builder) -> options table offset).


def _fb_vector(builder, start_fn, items: list[int], prepend) -> int:
    start_fn(builder, len(items))
    for item in reversed(items):  # flatbuffer vectors are built back to front
        prepend(item)
    return builder.EndVector()


def _fb_int_vector(builder, start_fn, items: list[int]) -> int:
    return _fb_vector(builder, start_fn, [int(i) for i in items], builder.PrependInt32)


def _fb_table_vector(builder, start_fn, offsets: list[int]) -> int:
    return _fb_vector(builder, start_fn, offsets, builder.PrependUOffsetTRelative)


def _fb_aligned_bytes(builder, data: bytes) -> int:
    # Like CreateByteVector, but with the payload start aligned to TFLITE_BUFFER_ALIGN.
    builder.StartVector(1, len(data), TFLITE_BUFFER_ALIGN)
    builder.head = builder.head - len(data)
    builder.Bytes[builder.head:builder.head + len(data)] = data
    builder.vectorNumElems = len(data)
    return builder.EndVector()


def _tflite_tensor_type(dtype: np.dtype) -> int:
    import tflite

    types = {np.dtype(np.float32): tflite.TensorType.FLOAT32,
             np.dtype(np.int32): tflite.TensorType.INT32}
    return types[np.dtype(dtype)]


def _tflite_bytes(tensors: list, operators: list, inputs: list[int], outputs: list[int],
                  description: str) -> bytes:
    import flatbuffers
    import tflite

    b = flatbuffers.Builder(1024)

    # Buffers: index 0 is the mandatory empty sentinel, used by every non-constant tensor.
    buffer_data: list[bytes | None] = [None]
    tensor_buffer: list[int] = []
    for _, _, dtype, data in tensors:
        if data is None:
            tensor_buffer.append(0)
        else:
            tensor_buffer.append(len(buffer_data))
            buffer_data.append(np.ascontiguousarray(data, dtype=np.dtype(dtype).newbyteorder("<"))
                               .tobytes())
    buffer_offsets = []
    for data in buffer_data:
        data_off = _fb_aligned_bytes(b, data) if data is not None else None
        tflite.BufferStart(b)
        if data_off is not None:
            tflite.BufferAddData(b, data_off)
        buffer_offsets.append(tflite.BufferEnd(b))

    tensor_offsets = []
    for (name, shape, dtype, _), buf in zip(tensors, tensor_buffer):
        name_off = b.CreateString(name)
        shape_off = _fb_int_vector(b, tflite.TensorStartShapeVector, list(shape))
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_off)
        tflite.TensorAddType(b, _tflite_tensor_type(dtype))
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, name_off)
        tensor_offsets.append(tflite.TensorEnd(b))

    # Operator codes: one per distinct builtin, referenced by index from the operators.
    codes: list[int] = []
    for code, *_ in operators:
        if code not in codes:
            codes.append(code)
    code_offsets = []
    for code in codes:
        tflite.OperatorCodeStart(b)
        # Schema 3a: readers use max(deprecated_builtin_code, builtin_code); the int8 field
        # must hold the code too (or 127, PLACEHOLDER_FOR_GREATER_OP_CODES) for old readers.
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tflite.OperatorCodeEnd(b))

    op_offsets = []
    for code, op_in, op_out, (opt_type, opt_fn) in operators:
        in_off = _fb_int_vector(b, tflite.OperatorStartInputsVector, op_in)
        out_off = _fb_int_vector(b, tflite.OperatorStartOutputsVector, op_out)
        opt_off = opt_fn(b)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(code))
        tflite.OperatorAddInputs(b, in_off)
        tflite.OperatorAddOutputs(b, out_off)
        tflite.OperatorAddBuiltinOptionsType(b, opt_type)
        tflite.OperatorAddBuiltinOptions(b, opt_off)
        op_offsets.append(tflite.OperatorEnd(b))

    sg_tensors = _fb_table_vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
    sg_inputs = _fb_int_vector(b, tflite.SubGraphStartInputsVector, inputs)
    sg_outputs = _fb_int_vector(b, tflite.SubGraphStartOutputsVector, outputs)
    sg_ops = _fb_table_vector(b, tflite.SubGraphStartOperatorsVector, op_offsets)
    sg_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, sg_tensors)
    tflite.SubGraphAddInputs(b, sg_inputs)
    tflite.SubGraphAddOutputs(b, sg_outputs)
    tflite.SubGraphAddOperators(b, sg_ops)
    tflite.SubGraphAddName(b, sg_name)
    subgraph = tflite.SubGraphEnd(b)

    m_codes = _fb_table_vector(b, tflite.ModelStartOperatorCodesVector, code_offsets)
    m_subgraphs = _fb_table_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    m_buffers = _fb_table_vector(b, tflite.ModelStartBuffersVector, buffer_offsets)
    m_desc = b.CreateString(description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, TFLITE_SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, m_codes)
    tflite.ModelAddSubgraphs(b, m_subgraphs)
    tflite.ModelAddDescription(b, m_desc)
    tflite.ModelAddBuffers(b, m_buffers)
    # No signature_defs: single-subgraph models are addressed by input/output index.
    b.Finish(tflite.ModelEnd(b), file_identifier=TFLITE_FILE_ID)
    return bytes(b.Output())


def _fc_options(activation: int):
    import tflite

    def build(b) -> int:
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, activation)
        tflite.FullyConnectedOptionsAddWeightsFormat(b, tflite.FullyConnectedOptionsWeightsFormat.DEFAULT)
        # keep_num_dims=False: output is [batch, units] (our inputs are 2-D anyway).
        tflite.FullyConnectedOptionsAddKeepNumDims(b, False)
        return tflite.FullyConnectedOptionsEnd(b)

    return tflite.BuiltinOptions.FullyConnectedOptions, build


def _conv_options(stride: int, activation: int):
    import tflite

    def build(b) -> int:
        tflite.Conv2DOptionsStart(b)
        tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME)
        tflite.Conv2DOptionsAddStrideW(b, stride)
        tflite.Conv2DOptionsAddStrideH(b, stride)
        tflite.Conv2DOptionsAddDilationWFactor(b, 1)
        tflite.Conv2DOptionsAddDilationHFactor(b, 1)
        tflite.Conv2DOptionsAddFusedActivationFunction(b, activation)
        return tflite.Conv2DOptionsEnd(b)

    return tflite.BuiltinOptions.Conv2DOptions, build


def _reshape_options(new_shape: list[int]):
    import tflite

    def build(b) -> int:
        shape_off = _fb_int_vector(b, tflite.ReshapeOptionsStartNewShapeVector, new_shape)
        tflite.ReshapeOptionsStart(b)
        tflite.ReshapeOptionsAddNewShape(b, shape_off)
        return tflite.ReshapeOptionsEnd(b)

    return tflite.BuiltinOptions.ReshapeOptions, build


def write_tflite_mlp(path: Path, weights: dict[str, np.ndarray]) -> None:
    """TFLite MLP: FULLY_CONNECTED with fused ReLU; weights [out, in] as TFLite expects."""
    import tflite

    f32 = np.dtype(np.float32)
    relu, none = tflite.ActivationFunctionType.RELU, tflite.ActivationFunctionType.NONE
    n_layers = len(MLP_SIZES) - 1
    tensors: list = [("x", [1, MLP_SIZES[0]], f32, None)]
    operators: list = []
    cur = 0
    for i in range(1, n_layers + 1):
        w, bias = weights[f"fc{i}.weight"], weights[f"fc{i}.bias"]
        w_idx = len(tensors)
        tensors.append((f"fc{i}.weight", list(w.shape), f32, w))
        tensors.append((f"fc{i}.bias", list(bias.shape), f32, bias))
        out_idx = len(tensors)
        tensors.append(("y" if i == n_layers else f"fc{i}", [1, w.shape[0]], f32, None))
        act = none if i == n_layers else relu
        operators.append((tflite.BuiltinOperator.FULLY_CONNECTED, [cur, w_idx, w_idx + 1],
                          [out_idx], _fc_options(act)))
        cur = out_idx
    fsutil.write_bytes(Path(path), _tflite_bytes(tensors, operators, [0], [cur], "crtforge bench mlp"))


def write_tflite_convnet(path: Path, weights: dict[str, np.ndarray]) -> None:
    """TFLite convnet, NHWC: CONV_2D (SAME, fused ReLU) x2, RESHAPE to [1, 4096], FULLY_CONNECTED."""
    import tflite

    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    relu, none = tflite.ActivationFunctionType.RELU, tflite.ActivationFunctionType.NONE
    h, w, c = CONV_IN_HWC
    # OIHW -> OHWI, TFLite's CONV_2D filter layout.
    w1 = np.transpose(weights["conv1.weight"], (0, 2, 3, 1))
    w2 = np.transpose(weights["conv2.weight"], (0, 2, 3, 1))
    flat_shape = np.array([1, CONV_FLAT], dtype=np.int32)
    tensors = [
        ("x", [1, h, w, c], f32, None),                                            # 0
        ("conv1.weight", list(w1.shape), f32, w1),                                 # 1
        ("conv1.bias", [CONV1_OUT], f32, weights["conv1.bias"]),                   # 2
        ("conv1", [1, h, w, CONV1_OUT], f32, None),                                # 3
        ("conv2.weight", list(w2.shape), f32, w2),                                 # 4
        ("conv2.bias", [CONV2_OUT], f32, weights["conv2.bias"]),                   # 5
        ("conv2", [1, CONV2_HW, CONV2_HW, CONV2_OUT], f32, None),                  # 6
        ("flat.shape", [2], i32, flat_shape),                                      # 7
        ("flat", [1, CONV_FLAT], f32, None),                                       # 8
        ("fc.weight", [CONV_CLASSES, CONV_FLAT], f32, weights["fc.weight"]),       # 9
        ("fc.bias", [CONV_CLASSES], f32, weights["fc.bias"]),                      # 10
        ("y", [1, CONV_CLASSES], f32, None),                                       # 11
    ]
    op = tflite.BuiltinOperator
    operators = [
        (op.CONV_2D, [0, 1, 2], [3], _conv_options(1, relu)),
        (op.CONV_2D, [3, 4, 5], [6], _conv_options(CONV2_STRIDE, relu)),
        # Explicit RESHAPE: TVM's FULLY_CONNECTED converter does not flatten a 4-D input itself.
        (op.RESHAPE, [6, 7], [8], _reshape_options([1, CONV_FLAT])),
        (op.FULLY_CONNECTED, [8, 9, 10], [11], _fc_options(none)),
    ]
    fsutil.write_bytes(Path(path), _tflite_bytes(tensors, operators, [0], [11], "crtforge bench convnet"))


# ---------------------------------------------------------------------------------------------


def write_all(out_dir: Path, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Write mlp.{onnx,tflite} and convnet.{onnx,tflite} into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {
        "mlp": (mlp_weights, write_onnx_mlp, write_tflite_mlp),
        "convnet": (convnet_weights, write_onnx_convnet, write_tflite_convnet),
    }
    paths: dict[str, dict[str, Path]] = {}
    for name, (weights_fn, onnx_fn, tflite_fn) in writers.items():
        weights = weights_fn(seed)
        paths[name] = {"onnx": out_dir / f"{name}.onnx", "tflite": out_dir / f"{name}.tflite"}
        onnx_fn(paths[name]["onnx"], weights)
        tflite_fn(paths[name]["tflite"], weights)
    return paths
