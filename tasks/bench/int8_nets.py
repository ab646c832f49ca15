"""Full-integer int8 TFLite benchmark networks, written by our own code (no TensorFlow needed).

Two networks, quantised as TFLite's converter does full-integer post-training quantisation:

* ``mlp_int8``: [1,256] -> FC(512)+ReLU -> FC(512)+ReLU -> FC(10), with the float weights of the float bench
  ``mlp`` (``tasks.bench.models.mlp_weights``), so the int8 and float32 benchmarks run the same function.
* ``dscnn_int8``: the keyword-spotting DS-CNN-S shape (MLPerf Tiny / ARM ML-KWS), the usual int8
  microcontroller workload: [1,49,10,1] MFCC features -> CONV_2D 64x(10x4) stride 2 SAME +ReLU -> 4 x
  (DEPTHWISE_CONV_2D 3x3 SAME +ReLU, CONV_2D 1x1x64 +ReLU) -> AVERAGE_POOL_2D 25x5 -> RESHAPE [1,64] -> FC(12).
  Weights are He-uniform and seeded (batch norm is assumed folded into them).

Why: the float benchmarks say nothing about the int8 kernels, whose cost and bit-exactness are what matter on
a microcontroller; these two cover FULLY_CONNECTED (per-tensor) and CONV_2D / DEPTHWISE_CONV_2D (per-channel),
AVERAGE_POOL_2D and RESHAPE, on realistic sizes.

The quantisation scheme is the converter's: int8 activations with one scale and an asymmetric zero point each,
taken from the min/max the float network reaches on seeded calibration inputs (0 always in range; a fused ReLU's
output uses the post-ReLU range); int8 weights symmetric in -127..127 with zero point 0, one scale per output
channel for convolutions (quantizedDimension 0 for CONV_2D's OHWI, 3 for DEPTHWISE's [1,KH,KW,C]) and one per
tensor for FULLY_CONNECTED (the converter's default); int32 biases at scale s_in * s_w, zero point 0.
AVERAGE_POOL_2D and RESHAPE outputs share their input's scale and zero point, as TFLite requires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from tasks import fsutil
from tasks.bench.models import MLP_SIZES, _bias, _he_uniform, mlp_weights
from tasks.compile.quantize import INT8_MAX, INT8_MIN, Activation, padding, round_half_away

NETWORKS: tuple[str, ...] = ("mlp_int8", "dscnn_int8")

DSCNN_IN_HWC: tuple[int, int, int] = (49, 10, 1)  # 49 frames x 10 MFCC coefficients
DSCNN_CHANNELS: int = 64
DSCNN_CONV1_KERNEL: tuple[int, int] = (10, 4)
DSCNN_CONV1_STRIDE: tuple[int, int] = (2, 2)
DSCNN_DW_KERNEL: tuple[int, int] = (3, 3)
DSCNN_BLOCKS: int = 4
DSCNN_CLASSES: int = 12

CALIBRATION_SAMPLES: int = 32
# Second element of the calibration rng seed, so calibration inputs never repeat the weight stream.
_CALIBRATION_STREAM: int = 1

TFLITE_SCHEMA_VERSION: int = 3
# The converter aligns constant buffers to 16 bytes; TFLM (and our C code) read int32 biases in place.
BUFFER_ALIGN: int = 16
INT32_MAX: int = 2**31 - 1



# ---------------------------------------------------------------------------------------------
# Float networks: one description drives the numpy reference, calibration, the TFLite graph and MACs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense:
    """FULLY_CONNECTED: weight [out, in] (TFLite's layout)."""
    name: str
    weight: np.ndarray
    bias: np.ndarray
    activation: Activation


@dataclass(frozen=True)
class Conv:
    """CONV_2D (weight OHWI) or DEPTHWISE_CONV_2D with depth multiplier 1 (weight [1, KH, KW, C])."""
    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    same: bool
    activation: Activation
    depthwise: bool = False

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[1]), int(self.weight.shape[2])

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[3] if self.depthwise else self.weight.shape[0])


@dataclass(frozen=True)
class AvgPool:
    """AVERAGE_POOL_2D, VALID, stride equal to the filter (Keras' default)."""
    name: str
    filter: tuple[int, int]


@dataclass(frozen=True)
class Reshape:
    name: str
    shape: tuple[int, ...]


Layer = Dense | Conv | AvgPool | Reshape


@dataclass(frozen=True)
class FloatNet:
    name: str
    input_shape: tuple[int, ...]  # batch 1
    layers: tuple[Layer, ...]


def mlp_net(seed: int = 0) -> FloatNet:
    """The float bench MLP, same weights as ``tasks.bench.models``."""
    w = mlp_weights(seed)
    n_layers = len(MLP_SIZES) - 1
    layers = tuple(Dense(f"fc{i}", w[f"fc{i}.weight"], w[f"fc{i}.bias"],
                         Activation.NONE if i == n_layers else Activation.RELU)
                   for i in range(1, n_layers + 1))
    return FloatNet("mlp_int8", (1, MLP_SIZES[0]), layers)


def dscnn_net(seed: int = 0) -> FloatNet:
    """DS-CNN-S with seeded He-uniform weights and small biases."""
    rng = np.random.default_rng(seed)
    h, w, c_in = DSCNN_IN_HWC
    ch, (kh, kw), (dh, dw) = DSCNN_CHANNELS, DSCNN_CONV1_KERNEL, DSCNN_DW_KERNEL
    relu = Activation.RELU
    layers: list[Layer] = [Conv("conv1", _he_uniform(rng, (ch, kh, kw, c_in), kh * kw * c_in), _bias(rng, ch),
                                DSCNN_CONV1_STRIDE, True, relu)]
    for i in range(1, DSCNN_BLOCKS + 1):
        layers.append(Conv(f"dw{i}", _he_uniform(rng, (1, dh, dw, ch), dh * dw), _bias(rng, ch), (1, 1), True,
                           relu, depthwise=True))
        layers.append(Conv(f"pw{i}", _he_uniform(rng, (ch, 1, 1, ch), ch), _bias(rng, ch), (1, 1), True, relu))
    out_h = padding(h, kh, DSCNN_CONV1_STRIDE[0], 1, True).out_size
    out_w = padding(w, kw, DSCNN_CONV1_STRIDE[1], 1, True).out_size
    layers.append(AvgPool("pool", (out_h, out_w)))
    layers.append(Reshape("flatten", (1, ch)))
    layers.append(Dense("fc", _he_uniform(rng, (DSCNN_CLASSES, ch), ch), _bias(rng, DSCNN_CLASSES),
                        Activation.NONE))
    return FloatNet("dscnn_int8", (1, h, w, c_in), tuple(layers))


_NETS: dict[str, Callable[[int], FloatNet]] = {"mlp_int8": mlp_net, "dscnn_int8": dscnn_net}


def float_net(name: str, seed: int = 0) -> FloatNet:
    if name not in _NETS:
        raise ValueError(f"unknown int8 network {name!r}; known: {', '.join(NETWORKS)}")
    return _NETS[name](seed)


def _conv_out_hw(layer: Conv, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Output size and padding before, per axis, as TFLite computes them."""
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    ph, pw = padding(h, kh, sh, 1, layer.same), padding(w, kw, sw, 1, layer.same)
    return (ph.out_size, pw.out_size), (ph.before, pw.before)


def _layer_out_shape(layer: Layer, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(layer, Dense):
        return (in_shape[0], int(layer.weight.shape[0]))
    if isinstance(layer, Conv):
        (oh, ow), _ = _conv_out_hw(layer, in_shape[1], in_shape[2])
        return (in_shape[0], oh, ow, layer.out_channels)
    if isinstance(layer, AvgPool):
        n, h, w, c = in_shape
        return (n, padding(h, layer.filter[0], layer.filter[0], 1, False).out_size,
                padding(w, layer.filter[1], layer.filter[1], 1, False).out_size, c)
    return tuple(layer.shape)


def _apply(layer: Layer, x: np.ndarray) -> np.ndarray:
    """One layer on a float64 batch [N, ...], activation included."""
    if isinstance(layer, Dense):
        y = x @ layer.weight.T.astype(np.float64) + layer.bias
    elif isinstance(layer, Conv):
        n, h, w, c = x.shape
        (oh, ow), (top, left) = _conv_out_hw(layer, h, w)
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        # Zero-padded input big enough for every tap; SAME's odd pad pixel lands after, as in TensorFlow.
        hp, wp = max((oh - 1) * sh + kh, top + h), max((ow - 1) * sw + kw, left + w)
        xp = np.zeros((n, hp, wp, c))
        xp[:, top:top + h, left:left + w] = x
        y = np.zeros((n, oh, ow, layer.out_channels))
        wt = layer.weight.astype(np.float64)
        for fy in range(kh):
            for fx in range(kw):
                patch = xp[:, fy:fy + (oh - 1) * sh + 1:sh, fx:fx + (ow - 1) * sw + 1:sw]
                y += patch * wt[0, fy, fx] if layer.depthwise else patch @ wt[:, fy, fx, :].T
        y += layer.bias
    elif isinstance(layer, AvgPool):
        n, h, w, c = x.shape
        fh, fw = layer.filter
        oh, ow = h // fh, w // fw  # VALID with stride = filter
        y = x[:, :oh * fh, :ow * fw].reshape(n, oh, fh, ow, fw, c).mean(axis=(2, 4))
    else:
        y = x.reshape((x.shape[0],) + tuple(layer.shape[1:]))
    if getattr(layer, "activation", Activation.NONE) == Activation.RELU:
        y = np.maximum(y, 0.0)
    return y


def float_activations(net: FloatNet, x: np.ndarray) -> list[np.ndarray]:
    """The float64 network on a batch: [input, output of layer 1, ..., output of the last layer]."""
    acts = [np.asarray(x, dtype=np.float64)]
    for layer in net.layers:
        acts.append(_apply(layer, acts[-1]))
    return acts


def float_forward(net: FloatNet, x: np.ndarray) -> np.ndarray:
    return float_activations(net, x)[-1]


def calibration_inputs(net: FloatNet, seed: int = 0, count: int = CALIBRATION_SAMPLES) -> np.ndarray:
    """Seeded representative inputs [count, ...]: uniform [-1, 1] for the MLP, standard-normal MFCC-like
    features for DS-CNN (MFCCs are roughly zero-mean, unit-variance after normalisation)."""
    rng = np.random.default_rng([seed, _CALIBRATION_STREAM])
    shape = (count,) + net.input_shape[1:]
    if net.name == "mlp_int8":
        return rng.uniform(-1.0, 1.0, size=shape)
    return rng.standard_normal(size=shape)


def macs_int8(name: str) -> int:
    """Multiply-accumulates of one inference (biases, ReLUs and the pool's additions not counted)."""
    net = float_net(name)
    total, shape = 0, net.input_shape
    for layer in net.layers:
        out = _layer_out_shape(layer, shape)
        if isinstance(layer, Dense):
            total += int(layer.weight.size)
        elif isinstance(layer, Conv):
            taps = layer.kernel[0] * layer.kernel[1] * (1 if layer.depthwise else shape[3])
            total += out[1] * out[2] * layer.out_channels * taps
        shape = out
    return total


# ---------------------------------------------------------------------------------------------
# Quantisation (the converter's full-integer scheme)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QParams:
    scale: np.float32
    zero_point: int


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] widened to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = np.float32((hi - lo) / (INT8_MAX - INT8_MIN)) if hi > lo else np.float32(1.0)
    zp = int(np.clip(round_half_away(np.float64(INT8_MIN - lo / float(scale))), INT8_MIN, INT8_MAX))
    return QParams(scale, zp)


def quantize_weights(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 (-127..127): one scale per index of `axis`, or one for the tensor if axis is None."""
    w64 = w.astype(np.float64)
    reduce = tuple(range(w.ndim)) if axis is None else tuple(d for d in range(w.ndim) if d != axis)
    max_abs = np.abs(w64).max(axis=reduce, keepdims=True)
    # An all-zero channel gets scale 1 (its weights quantise to 0 either way).
    scales = np.where(max_abs > 0, max_abs / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(round_half_away(w64 / scales.astype(np.float64)), -INT8_MAX, INT8_MAX)
    scales = scales.reshape(-1)
    return q.astype(np.int8), scales


def quantize_bias(bias: np.ndarray, s_in: np.float32, s_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias at scale s_in * s_w (the product in float32, as the converter takes it)."""
    scales = (np.float32(s_in) * s_w.astype(np.float32)).astype(np.float32)
    q = round_half_away(bias.astype(np.float64) / scales.astype(np.float64))
    return np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32), scales


def calibrate(net: FloatNet, inputs: np.ndarray) -> list[QParams]:
    """Parameters of [input, each layer's output] from the observed float ranges; pool and reshape outputs
    inherit their input's (TFLite's kernels for them do not rescale)."""
    acts = float_activations(net, inputs)
    params = [activation_qparams(acts[0].min(), acts[0].max())]
    for layer, act in zip(net.layers, acts[1:]):
        if isinstance(layer, (AvgPool, Reshape)):
            params.append(params[-1])
        else:
            params.append(activation_qparams(act.min(), act.max()))
    return params


# ---------------------------------------------------------------------------------------------
# TFLite flatbuffer (tflite_micro's generated object API)
# ---------------------------------------------------------------------------------------------


class _AlignedBuilder(flatbuffers.Builder):
    """The object API writes each buffer's data with CreateNumpyVector (alignment 1 for uint8); this aligns
    those payloads to BUFFER_ALIGN instead. Only buffer data is passed as numpy, so nothing else moves."""

    def CreateNumpyVector(self, x: np.ndarray) -> int:
        data = np.ascontiguousarray(x, dtype=np.uint8).tobytes()
        self.StartVector(1, len(data), BUFFER_ALIGN)
        self.head = self.head - len(data)
        self.Bytes[self.head:self.head + len(data)] = data
        self.vectorNumElems = len(data)
        return self.EndVector()


# Operator versions the converter's op_version.cc gives these ops with int8 inputs and outputs.
_OP_VERSIONS: dict[int, int] = {
    fb.BuiltinOperator.FULLY_CONNECTED: 4,
    fb.BuiltinOperator.CONV_2D: 3,
    fb.BuiltinOperator.DEPTHWISE_CONV_2D: 3,
    fb.BuiltinOperator.AVERAGE_POOL_2D: 2,
    fb.BuiltinOperator.RESHAPE: 1,
}


class _GraphBuilder:
    """A one-subgraph model built tensor by tensor and operator by operator."""

    def __init__(self) -> None:
        self.buffers: list[fb.BufferT] = [fb.BufferT()]  # buffer 0: the empty sentinel of non-constant tensors
        self.tensors: list[fb.TensorT] = []
        self.operators: list[fb.OperatorT] = []
        self.opcodes: list[int] = []

    def tensor(self, name: str, shape: tuple[int, ...], ttype: int, scales: np.ndarray | None = None,
               zero_points: list[int] | None = None, axis: int = 0, data: np.ndarray | None = None) -> int:
        t = fb.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = ttype
        t.buffer = 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes(),
                                     dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scales is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scales)]
            q.zeroPoint = [int(z) for z in (zero_points if zero_points is not None else [0] * len(q.scale))]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: tuple[int, ...], qp: QParams) -> int:
        return self.tensor(name, shape, fb.TensorType.INT8, np.array([qp.scale]), [qp.zero_point])

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int, options: object) -> None:
        if code not in self.opcodes:
            self.opcodes.append(code)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes.index(code)
        o.inputs, o.outputs = list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def to_bytes(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        codes = []
        for code in self.opcodes:
            c = fb.OperatorCodeT()
            c.builtinCode = code
            # Schema 3a: readers take max(deprecated, builtin); old readers only see the int8 field.
            c.deprecatedBuiltinCode = min(code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            c.version = _OP_VERSIONS.get(code, 1)
            codes.append(c)
        sg = fb.SubGraphT()
        sg.tensors, sg.operators, sg.inputs, sg.outputs = self.tensors, self.operators, inputs, outputs
        sg.name = "main"
        model = fb.ModelT()
        model.version = TFLITE_SCHEMA_VERSION
        model.description = description
        model.operatorCodes, model.subgraphs, model.buffers = codes, [sg], self.buffers
        b = _AlignedBuilder(1024)
        b.Finish(model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _padding(same: bool) -> int:
    return fb.Padding.SAME if same else fb.Padding.VALID


def _add_weighted(g: _GraphBuilder, layer: Dense | Conv, x: int, qx: QParams, qy: QParams,
                  out_shape: tuple[int, ...]) -> int:
    if isinstance(layer, Dense):
        axis, w_axis = None, 0  # per-tensor FC, the converter's default
    else:
        axis = w_axis = 3 if layer.depthwise else 0
    w_q, s_w = quantize_weights(layer.weight, axis)
    b_q, s_b = quantize_bias(layer.bias, qx.scale, s_w)  # a per-tensor s_w broadcasts to one bias scale
    w = g.tensor(f"{layer.name}/weight", w_q.shape, fb.TensorType.INT8, s_w, [0] * len(s_w), w_axis, w_q)
    b = g.tensor(f"{layer.name}/bias", b_q.shape, fb.TensorType.INT32, s_b, [0] * len(s_b), 0, b_q)
    y = g.activation(layer.name, out_shape, qy)
    if isinstance(layer, Dense):
        opt = fb.FullyConnectedOptionsT()
        opt.fusedActivationFunction = int(layer.activation)
        opt.weightsFormat = fb.FullyConnectedOptionsWeightsFormat.DEFAULT
        opt.keepNumDims = False
        g.op(fb.BuiltinOperator.FULLY_CONNECTED, [x, w, b], [y], fb.BuiltinOptions.FullyConnectedOptions, opt)
        return y
    if layer.depthwise:
        opt = fb.DepthwiseConv2DOptionsT()
        opt.depthMultiplier = 1
        code, opt_type = fb.BuiltinOperator.DEPTHWISE_CONV_2D, fb.BuiltinOptions.DepthwiseConv2DOptions
    else:
        opt = fb.Conv2DOptionsT()
        code, opt_type = fb.BuiltinOperator.CONV_2D, fb.BuiltinOptions.Conv2DOptions
    opt.padding = _padding(layer.same)
    opt.strideH, opt.strideW = layer.stride
    opt.dilationHFactor = opt.dilationWFactor = 1
    opt.fusedActivationFunction = int(layer.activation)
    g.op(code, [x, w, b], [y], opt_type, opt)
    return y


def int8_tflite(net: FloatNet, calibration: np.ndarray, description: str) -> bytes:
    """The full-integer TFLite model of `net`, calibrated on `calibration` [N, ...]."""
    params = calibrate(net, calibration)
    g = _GraphBuilder()
    shape = net.input_shape
    x = inp = g.activation("input", shape, params[0])
    for layer, qx, qy in zip(net.layers, params[:-1], params[1:]):
        out_shape = _layer_out_shape(layer, shape)
        if isinstance(layer, (Dense, Conv)):
            x = _add_weighted(g, layer, x, qx, qy, out_shape)
        elif isinstance(layer, AvgPool):
            y = g.activation(layer.name, out_shape, qy)
            opt = fb.Pool2DOptionsT()
            opt.padding = fb.Padding.VALID
            opt.strideH, opt.strideW = layer.filter
            opt.filterHeight, opt.filterWidth = layer.filter
            opt.fusedActivationFunction = int(Activation.NONE)
            g.op(fb.BuiltinOperator.AVERAGE_POOL_2D, [x], [y], fb.BuiltinOptions.Pool2DOptions, opt)
            x = y
        else:
            # Both forms, as the converter writes them: the constant shape input and the new_shape option.
            new_shape = np.array(layer.shape, dtype=np.int32)
            s = g.tensor(f"{layer.name}/shape", new_shape.shape, fb.TensorType.INT32, data=new_shape)
            y = g.activation(layer.name, out_shape, qy)
            opt = fb.ReshapeOptionsT()
            opt.newShape = [int(d) for d in layer.shape]
            g.op(fb.BuiltinOperator.RESHAPE, [x, s], [y], fb.BuiltinOptions.ReshapeOptions, opt)
            x = y
        shape = out_shape
    return g.to_bytes([inp], [x], description)


def mlp_int8_bytes(seed: int = 0) -> bytes:
    net = mlp_net(seed)
    return int8_tflite(net, calibration_inputs(net, seed), f"crtforge bench mlp_int8 (seed {seed})")


def dscnn_int8_bytes(seed: int = 0) -> bytes:
    net = dscnn_net(seed)
    return int8_tflite(net, calibration_inputs(net, seed), f"crtforge bench dscnn_int8 (seed {seed})")


def write_mlp_int8(path: Path, seed: int = 0) -> None:
    fsutil.write_bytes(Path(path), mlp_int8_bytes(seed))


def write_dscnn_int8(path: Path, seed: int = 0) -> None:
    fsutil.write_bytes(Path(path), dscnn_int8_bytes(seed))


def write_all_int8(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write mlp_int8.tflite and dscnn_int8.tflite into `out_dir`; return their paths by network name."""
    out_dir = Path(out_dir)
    writers = {"mlp_int8": write_mlp_int8, "dscnn_int8": write_dscnn_int8}
    paths: dict[str, Path] = {}
    for name, write in writers.items():
        paths[name] = out_dir / f"{name}.tflite"
        write(paths[name], seed)
    return paths
