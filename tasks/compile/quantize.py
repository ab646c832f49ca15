"""Build-time constants of crtforge's int8 kernels (crt/include/crtforge/int8.h), computed exactly as TFLite does.

TFLite derives its fixed-point multipliers, shifts and activation limits at Prepare time from float32 scales;
the C kernels are only bit-exact with TFLite Micro if these constants are bit-identical too, so every rounding
and every float32-vs-double step below copies TFLite's (kernel_util.cc QuantizeMultiplier,
PopulateConvolutionQuantizationParams, GetQuantizedConvolutionMultipler, CalculateActivationRangeQuantized,
and the ADD/MUL Prepare functions). Pure Python + numpy: it runs in the pipeline, never on the device.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

INT8_MIN, INT8_MAX = -128, 127


class Rounding(enum.Enum):
    """Whose requantisation a weighted op reproduces: the reference of the model's format decides."""
    TFLITE = "tflite"            # TFLite files: integer multiplier and shift, TFLite's double rounding
    ONNXRUNTIME = "onnxruntime"  # ONNX QDQ files: a float32 scale per channel, rounded half to even (MLAS)


class Activation(enum.IntEnum):
    """TFLite's ActivationFunctionType values, so a model's option maps straight onto it."""
    NONE = 0
    RELU = 1
    RELU_N1_TO_1 = 2
    RELU6 = 3


@dataclass(frozen=True)
class QuantizedMultiplier:
    """A real multiplier as TFLite applies it: multiplier * 2^shift / 2^31 (shift > 0 shifts left)."""
    multiplier: int
    shift: int


@dataclass(frozen=True)
class ChannelQuant:
    """What crtforge_int8_channel_quant holds for FC/conv/depthwise: offsets, clamp, one entry per channel."""
    input_offset: int
    output_offset: int
    act_min: int
    act_max: int
    multipliers: np.ndarray  # int32 [channels] (or [1] for per-tensor); empty with `scales`
    shifts: np.ndarray       # int32, same length
    scales: np.ndarray | None = None  # float32 [channels]: onnxruntime's requantisation instead

    @property
    def per_channel(self) -> bool:
        return len(self.multipliers if self.scales is None else self.scales) > 1


@dataclass(frozen=True)
class AddParams:
    """crtforge_int8_add_params: TFLite's int8 ADD rescales both inputs to 2*max(s1, s2) / 2^20 first."""
    input1_offset: int
    input2_offset: int
    output_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class MulParams:
    """crtforge_int8_mul_params: one multiplier s1 * s2 / s_out."""
    input1_offset: int
    input2_offset: int
    output_offset: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class Padding:
    """An output size and the padding before it (TFLite puts an odd pixel after, which the kernels never read)."""
    out_size: int
    before: int


def round_half_away(x):
    """TfLiteRound / std::round: ties away from zero (Python's round() and numpy's round tie to even). Takes a
    number or an array and gives the same kind, as float."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_multiplier(real: float) -> QuantizedMultiplier:
    """TFLite's QuantizeMultiplier: frexp, round the mantissa to Q31; a mantissa that rounds up to 2^31 is halved
    with the exponent bumped, and an exponent below -31 (every bit shifted out) becomes multiplier 0."""
    if real == 0.0:
        return QuantizedMultiplier(0, 0)
    q, shift = math.frexp(real)
    q_fixed = int(round_half_away(q * (1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return QuantizedMultiplier(0, 0)
    return QuantizedMultiplier(q_fixed, shift)


def _multiplier_arrays(reals: list[float]) -> tuple[np.ndarray, np.ndarray]:
    qs = [quantize_multiplier(r) for r in reals]
    return (np.array([q.multiplier for q in qs], dtype=np.int32), np.array([q.shift for q in qs], dtype=np.int32))


def fast_requant(multipliers: np.ndarray, shifts: np.ndarray) -> np.ndarray | None:
    """The kernels' one-multiply requantisation table, [channels][4] int32: nudge low word, nudge high word,
    multiplier, shift of the high word (see crtforge_int8_channel_quant.fast). Exact for right shifts of 1 to 31,
    which nearly every FC/conv has; None when a channel has another shift (the kernels then take TFLite's two
    roundings as written)."""
    m = np.asarray(multipliers, dtype=np.int64)
    e = -np.asarray(shifts, dtype=np.int64)
    if e.size == 0 or e.min() < 1 or e.max() > 31:
        return None
    # srdhm's nudge 2^30 plus RoundingDivideByPOT's 2^(e-1), both moved above the product's 31 fraction bits.
    nudge = (1 << 30) + (1 << (30 + e))
    lo = (nudge & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    hi = (nudge >> 32).astype(np.int32)
    return np.stack([lo, hi, m.astype(np.int32), (e - 1).astype(np.int32)], axis=1)


def activation_range(activation: Activation, scale: float, zero_point: int) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized: zp + round(f / scale) with the division in float32."""
    def quantize(f: float) -> int:
        return zero_point + int(round_half_away(float(np.float32(f) / np.float32(scale))))

    lo, hi = INT8_MIN, INT8_MAX
    if activation in (Activation.RELU, Activation.RELU6):
        lo = max(lo, quantize(0.0))
    if activation == Activation.RELU6:
        hi = min(hi, quantize(6.0))
    if activation == Activation.RELU_N1_TO_1:
        lo, hi = max(lo, quantize(-1.0)), min(hi, quantize(1.0))
    return lo, hi


def channel_quant(input_scale: float, input_zp: int, weight_scales: np.ndarray, output_scale: float,
                  output_zp: int, activation: Activation, per_tensor_fc: bool = False) -> ChannelQuant:
    """Constants of a weighted op. Per channel (conv, depthwise, per-channel FC) TFLite computes
    (double)s_in * (double)s_w[c] / (double)s_out; a per-tensor FC takes the product s_in * s_w in float32
    first (GetQuantizedConvolutionMultipler), which can differ in the last bit: `per_tensor_fc` picks that."""
    s_w = np.asarray(weight_scales, dtype=np.float32).reshape(-1)
    s_in, s_out = np.float32(input_scale), np.float32(output_scale)
    if per_tensor_fc:
        if len(s_w) != 1:
            raise ValueError(f"a per-tensor FC has one weight scale, got {len(s_w)}")
        reals = [float(np.float32(s_in * s_w[0])) / float(s_out)]
    else:
        reals = [float(s_in) * float(s) / float(s_out) for s in s_w]
    mult, shift = _multiplier_arrays(reals)
    lo, hi = activation_range(activation, float(s_out), output_zp)
    return ChannelQuant(-int(input_zp), int(output_zp), lo, hi, mult, shift)


def onnxruntime_channel_quant(input_scale: float, input_zp: int, weight_scales: np.ndarray, output_scale: float,
                              output_zp: int) -> ChannelQuant:
    """Constants of a weighted op of an ONNX QDQ model as onnxruntime computes them (QLinearConv, QGemm,
    QLinearMatMul): scale[c] = fl32(fl32(s_in * s_w[c]) / s_out), every step in float32. No fused activation:
    onnxruntime's quantiser folds a ReLU into the output's range."""
    s_w = np.asarray(weight_scales, dtype=np.float32).reshape(-1)
    scales = (np.float32(input_scale) * s_w).astype(np.float32) / np.float32(output_scale)
    empty = np.zeros(0, np.int32)
    return ChannelQuant(-int(input_zp), int(output_zp), INT8_MIN, INT8_MAX, empty, empty, scales.astype(np.float32))


def add_params(s1: float, zp1: int, s2: float, zp2: int, s_out: float, zp_out: int,
               activation: Activation) -> AddParams:
    """TFLite's int8 ADD Prepare: left_shift 20, inputs scaled by s_i / (2 max(s1, s2)), output by
    2 max(s1, s2) / (2^20 s_out), all in double from the float32 scales."""
    left_shift = 20
    s1d, s2d, sod = float(np.float32(s1)), float(np.float32(s2)), float(np.float32(s_out))
    twice_max = 2.0 * max(s1d, s2d)
    m1 = quantize_multiplier(s1d / twice_max)
    m2 = quantize_multiplier(s2d / twice_max)
    mo = quantize_multiplier(twice_max / ((1 << left_shift) * sod))
    lo, hi = activation_range(activation, sod, zp_out)
    return AddParams(-int(zp1), -int(zp2), int(zp_out), left_shift, m1.multiplier, m1.shift, m2.multiplier,
                     m2.shift, mo.multiplier, mo.shift, lo, hi)


def mul_params(s1: float, zp1: int, s2: float, zp2: int, s_out: float, zp_out: int,
               activation: Activation) -> MulParams:
    """TFLite's int8 MUL Prepare: (double)s1 * (double)s2 / (double)s_out."""
    s1d, s2d, sod = float(np.float32(s1)), float(np.float32(s2)), float(np.float32(s_out))
    m = quantize_multiplier(s1d * s2d / sod)
    lo, hi = activation_range(activation, sod, zp_out)
    return MulParams(-int(zp1), -int(zp2), int(zp_out), m.multiplier, m.shift, lo, hi)


def padding(in_size: int, filter_size: int, stride: int, dilation: int, same: bool) -> Padding:
    """TFLite's ComputePaddingHeightWidth for one axis: SAME pads (out-1)*stride + effective filter - in in total,
    the smaller half before; VALID pads nothing."""
    effective = (filter_size - 1) * dilation + 1
    if same:
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size - effective + stride) // stride
    before = max(((out - 1) * stride + effective - in_size) // 2, 0)
    return Padding(out, before)


def pack_weights_wide(matrix: np.ndarray) -> np.ndarray:
    """pack_weights' layout widened to int16 (crtforge_int8_fully_connected_wide, crtforge_int8_conv2d_wide), each
    whole quad of k reordered k0 k2 k1 k3 like the kernels' input column, so one SMLAD takes a weight word as is."""
    w = np.ascontiguousarray(matrix, dtype=np.int8)
    if w.ndim != 2:
        raise ValueError(f"pack_weights_wide wants a [rows][k] matrix, got shape {w.shape}")
    whole = w.shape[1] - w.shape[1] % 4
    quads = w[:, :whole].reshape(w.shape[0], -1, 4)[..., [0, 2, 1, 3]].reshape(w.shape[0], whole)
    return pack_weights(np.concatenate([quads, w[:, whole:]], axis=1)).astype(np.int16)


def pack_depthwise(filt: np.ndarray, depth_multiplier: int) -> np.ndarray:
    """The filter layout of crtforge_int8_depthwise_conv2d: TFLite's [KH][KW][C*M] widened to int16. With one
    filter per channel, each whole quad of channels first gets its taps together, [quad][KH][KW][4] in the order
    c0 c2 c1 c3 (the halves SXTB16 makes of a word of inputs), so one pointer walks a block's window 8 bytes at
    a time; the remaining channels (all of them when M > 1) follow as [KH][KW][rest]."""
    w = np.asarray(filt).astype(np.int16)
    if w.ndim != 3:
        raise ValueError(f"pack_depthwise wants a [KH][KW][C*M] filter, got shape {w.shape}")
    kh, kw, channels = w.shape
    blocked = channels - channels % 4 if depth_multiplier == 1 else 0
    quads = w[:, :, :blocked].reshape(kh, kw, -1, 4)[..., [0, 2, 1, 3]].transpose(2, 0, 1, 3)
    return np.concatenate([quads.reshape(-1), w[:, :, blocked:].reshape(-1)])


def conv_column(k: int) -> int:
    """The length of crtforge_int8_conv2d's input column for k = KH*KW*in_c: k in whole quads."""
    return -(-k // 4) * 4


def conv_matrix(ohwi: np.ndarray) -> np.ndarray:
    """A conv filter OHWI as crtforge_int8_conv2d's [out_c][conv_column(k)] matrix: each row zero-padded to whole
    quads, so the dot products have no leftover (a first layer's 3x3x3 = 27 would leave 3 per row); the kernel
    zeroes the column's padding, so the sums are the same."""
    w = np.asarray(ohwi).reshape(ohwi.shape[0], -1)
    return np.pad(w, ((0, 0), (0, conv_column(w.shape[1]) - w.shape[1])))


def pack_weights(matrix: np.ndarray) -> np.ndarray:
    """The weight layout of crtforge_int8_fully_connected and crtforge_int8_conv2d (see CRTFORGE_INT8_PACK_ROWS):
    rows in groups of 4, each group's k-quads interleaved row by row (16 bytes per quad), then its k % 4
    leftovers row by row; the rows % 4 last rows row-major. Why: the DSP kernel walks four rows with one
    pointer and word loads, and each word's SXTB16 lanes line up with the column's int16 pairs.
    `matrix` is [rows][k] int8 (FC [out][in]; conv OHWI reshaped to [out_c][KH*KW*in_c])."""
    w = np.ascontiguousarray(matrix, dtype=np.int8)
    if w.ndim != 2:
        raise ValueError(f"pack_weights wants a [rows][k] matrix, got shape {w.shape}")
    rows, k = w.shape
    quads, grouped = k // 4, rows - rows % 4
    parts = []
    for r in range(0, grouped, 4):
        group = w[r:r + 4]
        parts.append(group[:, :4 * quads].reshape(4, quads, 4).transpose(1, 0, 2).reshape(-1))
        parts.append(group[:, 4 * quads:].reshape(-1))
    parts.append(w[grouped:].reshape(-1))
    return np.concatenate(parts).astype(np.int8)
