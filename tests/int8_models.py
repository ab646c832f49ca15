"""Small random single-op int8 TFLite models, written with TFLM's flatbuffer schema (no TensorFlow needed).

Each `random_*` function returns a case: the .tflite bytes, everything a kernel test needs to call the C
kernel (weights, bias, scales, zero points, geometry) and seeded inputs. Quantisation follows TFLite's
full-integer scheme: int8 activations with nonzero zero points, int8 weights symmetric per channel with scales
spread over 1e-4..1, int32 bias at scale s_in * s_w[c]. The bias and the output scale are picked from the case's
own accumulators so that every channel's outputs use the int8 range instead of sitting at the zero point or
saturating.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from tasks.compile.quantize import Activation, padding


@dataclass
class _Tensor:
    shape: tuple[int, ...]
    dtype: int  # fb.TensorType
    scale: list[float]
    zero_point: list[int]
    axis: int = 0
    data: np.ndarray | None = None


@dataclass
class _Graph:
    """One subgraph with one operator: the non-constant op inputs are the model's inputs."""
    tensors: list[_Tensor] = field(default_factory=list)

    def add(self, t: _Tensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def to_bytes(self, opcode: int, options_type: int, options: object, op_inputs: list[int],
                 op_outputs: list[int]) -> bytes:
        buffers = [fb.BufferT()]  # buffer 0: the empty sentinel every non-constant tensor points at
        tensors = []
        for i, t in enumerate(self.tensors):
            tt = fb.TensorT()
            tt.shape = list(t.shape)
            tt.type = t.dtype
            tt.name = f"t{i}".encode()
            tt.buffer = 0
            if t.data is not None:
                b = fb.BufferT()
                b.data = np.frombuffer(np.ascontiguousarray(t.data).tobytes(), dtype=np.uint8)
                buffers.append(b)
                tt.buffer = len(buffers) - 1
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in t.scale]
            q.zeroPoint = [int(z) for z in t.zero_point]
            q.quantizedDimension = t.axis
            tt.quantization = q
            tensors.append(tt)
        code = fb.OperatorCodeT()
        code.builtinCode = opcode
        code.deprecatedBuiltinCode = min(opcode, 127)
        code.version = 1
        op = fb.OperatorT()
        op.opcodeIndex = 0
        op.inputs = op_inputs
        op.outputs = op_outputs
        op.builtinOptionsType = options_type
        op.builtinOptions = options
        sg = fb.SubGraphT()
        sg.tensors = tensors
        sg.inputs = [i for i in op_inputs if i >= 0 and self.tensors[i].data is None]
        sg.outputs = op_outputs
        sg.operators = [op]
        model = fb.ModelT()
        model.version = 3
        model.operatorCodes = [code]
        model.subgraphs = [sg]
        model.buffers = buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def _weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-127, 128, size=shape, dtype=np.int64).astype(np.int8)  # symmetric: -128 unused


def _channel_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """Log-uniform over 1e-4..1, with both ends present when there are two channels or more."""
    s = 10.0 ** rng.uniform(-4.0, 0.0, size=n)
    if n >= 2:
        s[rng.permutation(n)[:2]] = [1e-4, 1.0]
    return s.astype(np.float32)


def _zero_point(rng: np.random.Generator) -> int:
    zp = 0
    while zp == 0:
        zp = int(rng.integers(-100, 101))
    return zp


def _output_scale(real_outputs: np.ndarray) -> np.float32:
    """A scale that spreads the real outputs over most of int8 (the widest 2 % saturate)."""
    spread = float(np.percentile(np.abs(real_outputs), 98)) if real_outputs.size else 1.0
    return np.float32(max(spread, 1e-6) / 100.0)


# --- fully connected, conv2d, depthwise conv2d ----------------------------------------------------------


@dataclass(frozen=True)
class WeightedCase:
    """FULLY_CONNECTED, CONV_2D or DEPTHWISE_CONV_2D. Filter layouts as TFLite stores them: FC [out][in],
    conv OHWI, depthwise [1][KH][KW][C*M]."""
    op: str
    tflite: bytes
    input: np.ndarray
    output_shape: tuple[int, ...]
    weights: np.ndarray
    bias: np.ndarray
    s_in: np.float32
    zp_in: int
    s_w: np.ndarray
    s_out: np.float32
    zp_out: int
    activation: Activation
    per_channel: bool = True
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    same: bool = False
    depth_multiplier: int = 1


def _real_accumulators(acc: np.ndarray, s_in: np.float32, s_w: np.ndarray) -> np.ndarray:
    return acc.astype(np.float64) * float(s_in) * s_w.astype(np.float64)


def _input_scale(acc: np.ndarray, s_w: np.ndarray) -> np.float32:
    """An input scale that puts a typical weighted sum near 3.0 in real terms, so RELU6 clamps some outputs and
    not all of them."""
    typical = float(np.percentile(np.abs(acc.astype(np.float64) * s_w.astype(np.float64)), 75)) or 1.0
    return np.float32(3.0 / typical)


def _bias(rng: np.random.Generator, acc: np.ndarray, s_in: np.float32, s_w: np.ndarray) -> np.ndarray:
    """int32 bias giving every channel a real offset of the size of a typical weighted sum: with weight scales
    10^4 apart the weighted sums of the small channels are negligible, and without it their outputs would all
    sit at the zero point (a weak test)."""
    typical = float(np.percentile(np.abs(_real_accumulators(acc, s_in, s_w)), 75)) or 1.0
    real = rng.uniform(-1.0, 1.0, size=s_w.shape) * typical
    return np.clip(np.round(real / (float(s_in) * s_w.astype(np.float64))), -(1 << 28), 1 << 28).astype(np.int32)


def _weighted_tensors(g: _Graph, input_shape, weights, w_axis, s_w, bias, s_in, zp_in):
    x = g.add(_Tensor(input_shape, fb.TensorType.INT8, [s_in], [zp_in]))
    w = g.add(_Tensor(weights.shape, fb.TensorType.INT8, list(s_w), [0] * len(s_w), w_axis, weights))
    b_scales = [float(np.float32(s_in) * s) for s in s_w]
    b = g.add(_Tensor(bias.shape, fb.TensorType.INT32, b_scales, [0] * len(s_w), 0, bias))
    return x, w, b


def random_fully_connected(seed: int, batches: int, in_features: int, out_features: int,
                           activation: Activation, per_channel: bool) -> WeightedCase:
    rng = np.random.default_rng(seed)
    zp_in = _zero_point(rng)
    weights = _weights(rng, (out_features, in_features))
    s_w = _channel_scales(rng, out_features) if per_channel else np.array([10.0 ** rng.uniform(-4, 0)], np.float32)
    x = _int8(rng, (batches, in_features))
    acc = (x.astype(np.int64) - zp_in) @ weights.T.astype(np.int64)
    s_w_all = np.resize(s_w, out_features)
    s_in = _input_scale(acc, s_w_all)
    bias = _bias(rng, acc, s_in, s_w_all)
    s_out, zp_out = _output_scale(_real_accumulators(acc + bias, s_in, s_w_all)), _zero_point(rng)
    g = _Graph()
    xi, wi, bi = _weighted_tensors(g, x.shape, weights, 0, s_w, bias, s_in, zp_in)
    yi = g.add(_Tensor((batches, out_features), fb.TensorType.INT8, [s_out], [zp_out]))
    opt = fb.FullyConnectedOptionsT()
    opt.fusedActivationFunction = int(activation)
    tfl = g.to_bytes(fb.BuiltinOperator.FULLY_CONNECTED, fb.BuiltinOptions.FullyConnectedOptions, opt,
                     [xi, wi, bi], [yi])
    return WeightedCase("FULLY_CONNECTED", tfl, x, (batches, out_features), weights, bias, s_in, zp_in, s_w,
                        s_out, zp_out, activation, per_channel)


def _conv_reference_acc(x, w_hwio, stride, dilation, pads, out_hw, zp_in, depthwise, mult):
    """int64 accumulators (no bias) with taps outside the image skipped: only to choose an output scale."""
    n, h, wd, c = x.shape
    kh, kw, _, oc = w_hwio.shape
    xp = np.zeros((n, h + kh * dilation[0] * 2 + stride[0] * out_hw[0], wd + kw * dilation[1] * 2 +
                   stride[1] * out_hw[1], c), np.int64)
    xp[:, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x.astype(np.int64) - zp_in
    acc = np.zeros((n, out_hw[0], out_hw[1], oc), np.int64)
    for fy in range(kh):
        for fx in range(kw):
            patch = xp[:, fy * dilation[0]:fy * dilation[0] + stride[0] * out_hw[0]:stride[0],
                       fx * dilation[1]:fx * dilation[1] + stride[1] * out_hw[1]:stride[1]]
            if depthwise:
                acc += np.repeat(patch, mult, axis=3) * w_hwio[fy, fx, 0].astype(np.int64)
            else:
                acc += patch @ w_hwio[fy, fx].astype(np.int64)
    return acc


def random_conv2d(seed: int, input_shape: tuple[int, int, int, int], out_c: int, kernel: tuple[int, int],
                  stride: tuple[int, int], dilation: tuple[int, int], same: bool, activation: Activation,
                  depthwise: bool = False, depth_multiplier: int = 1) -> WeightedCase:
    rng = np.random.default_rng(seed)
    n, h, w, c = input_shape
    if depthwise:
        out_c = c * depth_multiplier
    zp_in = _zero_point(rng)
    if depthwise:
        weights = _weights(rng, (1, kernel[0], kernel[1], out_c))
        w_hwio = weights.reshape(kernel[0], kernel[1], 1, out_c)
    else:
        weights = _weights(rng, (out_c, kernel[0], kernel[1], c))
        w_hwio = weights.transpose(1, 2, 3, 0)
    s_w = _channel_scales(rng, out_c)
    x = _int8(rng, input_shape)
    ph = padding(h, kernel[0], stride[0], dilation[0], same)
    pw = padding(w, kernel[1], stride[1], dilation[1], same)
    out_shape = (n, ph.out_size, pw.out_size, out_c)
    acc = _conv_reference_acc(x, w_hwio, stride, dilation, (ph.before, pw.before), out_shape[1:3], zp_in,
                              depthwise, depth_multiplier)
    s_in = _input_scale(acc, s_w)
    bias = _bias(rng, acc, s_in, s_w)
    s_out, zp_out = _output_scale(_real_accumulators(acc + bias, s_in, s_w)), _zero_point(rng)
    g = _Graph()
    xi, wi, bi = _weighted_tensors(g, input_shape, weights, 3 if depthwise else 0, s_w, bias, s_in, zp_in)
    yi = g.add(_Tensor(out_shape, fb.TensorType.INT8, [s_out], [zp_out]))
    pad = fb.Padding.SAME if same else fb.Padding.VALID
    if depthwise:
        opt = fb.DepthwiseConv2DOptionsT()
        opt.depthMultiplier = depth_multiplier
        opcode, opt_type, name = (fb.BuiltinOperator.DEPTHWISE_CONV_2D, fb.BuiltinOptions.DepthwiseConv2DOptions,
                                  "DEPTHWISE_CONV_2D")
    else:
        opt = fb.Conv2DOptionsT()
        opcode, opt_type, name = fb.BuiltinOperator.CONV_2D, fb.BuiltinOptions.Conv2DOptions, "CONV_2D"
    opt.padding, opt.strideH, opt.strideW = pad, stride[0], stride[1]
    opt.dilationHFactor, opt.dilationWFactor = dilation
    opt.fusedActivationFunction = int(activation)
    tfl = g.to_bytes(opcode, opt_type, opt, [xi, wi, bi], [yi])
    return WeightedCase(name, tfl, x, out_shape, weights, bias, s_in, zp_in, s_w, s_out, zp_out, activation,
                        True, stride, dilation, same, depth_multiplier)


# --- ADD, MUL -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryCase:
    op: str  # "ADD" or "MUL"
    tflite: bytes
    a: np.ndarray
    b: np.ndarray
    s1: np.float32
    zp1: int
    s2: np.float32
    zp2: int
    s_out: np.float32
    zp_out: int
    activation: Activation


def random_binary(seed: int, op: str, shape: tuple[int, ...], activation: Activation) -> BinaryCase:
    rng = np.random.default_rng(seed)
    s1, s2 = (np.float32(10.0 ** rng.uniform(-3, 0)) for _ in range(2))
    zp1, zp2 = _zero_point(rng), _zero_point(rng)
    a, b = _int8(rng, shape), _int8(rng, shape)
    ra = (a.astype(np.float64) - zp1) * float(s1)
    rb = (b.astype(np.float64) - zp2) * float(s2)
    s_out, zp_out = _output_scale(ra + rb if op == "ADD" else ra * rb), _zero_point(rng)
    g = _Graph()
    ai = g.add(_Tensor(shape, fb.TensorType.INT8, [s1], [zp1]))
    bi = g.add(_Tensor(shape, fb.TensorType.INT8, [s2], [zp2]))
    yi = g.add(_Tensor(shape, fb.TensorType.INT8, [s_out], [zp_out]))
    if op == "ADD":
        opt, opcode, opt_type = fb.AddOptionsT(), fb.BuiltinOperator.ADD, fb.BuiltinOptions.AddOptions
    else:
        opt, opcode, opt_type = fb.MulOptionsT(), fb.BuiltinOperator.MUL, fb.BuiltinOptions.MulOptions
    opt.fusedActivationFunction = int(activation)
    tfl = g.to_bytes(opcode, opt_type, opt, [ai, bi], [yi])
    return BinaryCase(op, tfl, a, b, s1, zp1, s2, zp2, s_out, zp_out, activation)


# --- AVERAGE_POOL_2D, MAX_POOL_2D -----------------------------------------------------------------------


@dataclass(frozen=True)
class PoolCase:
    op: str  # "AVERAGE_POOL_2D" or "MAX_POOL_2D"
    tflite: bytes
    input: np.ndarray
    output_shape: tuple[int, ...]
    s: np.float32  # input and output share scale and zero point, as TFLite requires
    zp: int
    filter: tuple[int, int]
    stride: tuple[int, int]
    same: bool
    activation: Activation


def random_pool(seed: int, op: str, input_shape: tuple[int, int, int, int], filt: tuple[int, int],
                stride: tuple[int, int], same: bool, activation: Activation) -> PoolCase:
    rng = np.random.default_rng(seed)
    s, zp = np.float32(10.0 ** rng.uniform(-2.5, -1)), _zero_point(rng)
    x = _int8(rng, input_shape)
    n, h, w, c = input_shape
    out_shape = (n, padding(h, filt[0], stride[0], 1, same).out_size, padding(w, filt[1], stride[1], 1, same).out_size,
                 c)
    g = _Graph()
    xi = g.add(_Tensor(input_shape, fb.TensorType.INT8, [s], [zp]))
    yi = g.add(_Tensor(out_shape, fb.TensorType.INT8, [s], [zp]))
    opt = fb.Pool2DOptionsT()
    opt.padding = fb.Padding.SAME if same else fb.Padding.VALID
    opt.strideH, opt.strideW = stride
    opt.filterHeight, opt.filterWidth = filt
    opt.fusedActivationFunction = int(activation)
    opcode = fb.BuiltinOperator.AVERAGE_POOL_2D if op == "AVERAGE_POOL_2D" else fb.BuiltinOperator.MAX_POOL_2D
    tfl = g.to_bytes(opcode, fb.BuiltinOptions.Pool2DOptions, opt, [xi], [yi])
    return PoolCase(op, tfl, x, out_shape, s, zp, filt, stride, same, activation)


def run_tflm(tflite: bytes, inputs: list[np.ndarray]) -> np.ndarray:
    """TFLM's interpreter (reference kernels, double rounding) on one model: the reference outputs."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite)
    for i, x in enumerate(inputs):
        interp.set_input(x, i)
    interp.invoke()
    return interp.get_output(0)


def softmax(seed: int, shape: tuple[int, ...], beta: float = 1.0) -> tuple[bytes, np.ndarray]:
    """An int8 SOFTMAX (output scale 1/256, zero point -128, as TFLite requires)."""
    rng = np.random.default_rng(seed)
    s, zp = np.float32(10.0 ** rng.uniform(-2, -1)), _zero_point(rng)
    g = _Graph()
    xi = g.add(_Tensor(shape, fb.TensorType.INT8, [s], [zp]))
    yi = g.add(_Tensor(shape, fb.TensorType.INT8, [1.0 / 256.0], [-128]))
    opt = fb.SoftmaxOptionsT()
    opt.beta = beta
    return g.to_bytes(fb.BuiltinOperator.SOFTMAX, fb.BuiltinOptions.SoftmaxOptions, opt, [xi], [yi]), _int8(rng, shape)


def logistic(seed: int, shape: tuple[int, ...]) -> tuple[bytes, np.ndarray]:
    """An int8 LOGISTIC (output scale 1/256, zero point -128, as TFLite requires): an op crtforge has no integer
    kernel for, so it runs through TVM's float path."""
    rng = np.random.default_rng(seed)
    s, zp = np.float32(10.0 ** rng.uniform(-2, -1)), _zero_point(rng)
    g = _Graph()
    xi = g.add(_Tensor(shape, fb.TensorType.INT8, [s], [zp]))
    yi = g.add(_Tensor(shape, fb.TensorType.INT8, [1.0 / 256.0], [-128]))
    return g.to_bytes(fb.BuiltinOperator.LOGISTIC, fb.BuiltinOptions.NONE, None, [xi], [yi]), _int8(rng, shape)


def reduced_shape(shape: tuple[int, ...], axes: list[int], keep_dims: bool) -> tuple[int, ...]:
    """The output shape TFLite gives a MEAN: reduced axes become 1 with keep_dims, else disappear."""
    red = {a % len(shape) for a in axes}
    if keep_dims:
        return tuple(1 if i in red else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in red)


def _tensor(shape, dtype: int, name: str, buffer: int, scale: float | None = None, zero_point: int = 0):
    t = fb.TensorT()
    t.shape, t.type, t.name, t.buffer = list(shape), dtype, name.encode(), buffer
    t.quantization = fb.QuantizationParametersT()
    if scale is not None:  # else no scale/zero point vectors at all, as TFLite's converter writes the axes
        t.quantization.scale, t.quantization.zeroPoint = [float(np.float32(scale))], [int(zero_point)]
    return t


def mean_model(shape: tuple[int, ...], axes: list[int], keep_dims: bool, s_in: float, zp_in: int, s_out: float,
               zp_out: int) -> bytes:
    """A one-op int8 MEAN: input [shape], the axes a constant int32 tensor (TFLite's second input) without
    quantisation parameters, ReducerOptions keep_dims. Its own builder rather than tests/int8_models.py's _Graph,
    which gives every tensor a scale and zero point list (empty ones trip TVM's TFLite importer)."""
    axes_buffer = fb.BufferT()
    axes_buffer.data = np.frombuffer(np.array(axes, np.int32).tobytes(), dtype=np.uint8)
    tensors = [_tensor(shape, fb.TensorType.INT8, "input", 0, s_in, zp_in),
               _tensor((len(axes),), fb.TensorType.INT32, "axes", 1),
               _tensor(reduced_shape(shape, axes, keep_dims), fb.TensorType.INT8, "output", 0, s_out, zp_out)]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.MEAN
    code.version = 1
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType = fb.BuiltinOptions.ReducerOptions
    op.builtinOptions = fb.ReducerOptionsT()
    op.builtinOptions.keepDims = keep_dims
    sg = fb.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [2], [op]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers = [fb.BufferT(), axes_buffer]  # buffer 0: the empty sentinel of non-constant tensors
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
