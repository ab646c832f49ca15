"""Build-time constants of crtforge's int8 SOFTMAX (crt/include/crtforge/int8.h), computed exactly as TFLite does.

TFLite Micro's SoftmaxPrepare (softmax_common.cc) turns beta and the float32 input scale into a Q5.26 input
multiplier with PreprocessSoftmaxScaling and a cut-off diff_min with CalculateInputRadius, both in double; the
kernel is bit-exact with TFLM only if these three integers are identical, so each step below copies TFLite's
(quantization_util.cc). Pure Python + numpy: it runs in the pipeline, never on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.compile.quantize import QuantizedMultiplier, quantize_multiplier

# The exp() argument is Q5.26: differences down to -32 after scaling by beta * s_in (exp(-32) is far below
# the accumulator's resolution), TFLite's kScaledDiffIntegerBits.
SCALED_DIFF_INTEGER_BITS = 5
# The only output quantisation TFLite accepts for int8 SOFTMAX (probabilities in [0, 1) over int8).
OUTPUT_SCALE = 1.0 / 256.0
OUTPUT_ZERO_POINT = -128
# CRTFORGE_INT8_SOFTMAX_MAX_DEPTH: the row's sum of exps (up to depth * 2^19 in Q12.19) must fit in int32.
MAX_DEPTH = 4095


@dataclass(frozen=True)
class SoftmaxParams:
    """crtforge_int8_softmax_params: beta * s_in * 2^26 as multiplier * 2^left_shift / 2^31, and the smallest
    x - max whose exp still counts."""
    input_multiplier: int
    input_left_shift: int
    diff_min: int


def quantize_multiplier_greater_than_one(real: float) -> QuantizedMultiplier:
    """TFLite's QuantizeMultiplierGreaterThanOne: QuantizeMultiplier for real > 1, so the shift is a left shift
    (>= 0). TFLite aborts (TFLITE_CHECK) otherwise; here that is a ValueError."""
    if not real > 1.0:
        raise ValueError(f"softmax: the real multiplier beta * input_scale * 2^26 must exceed 1, got {real!r}")
    q = quantize_multiplier(real)
    if q.shift < 0:
        raise ValueError(f"softmax: multiplier {real!r} gave a right shift ({q.shift})")
    return q


def input_radius(integer_bits: int, left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite's CalculateInputRadius: the largest |x - max| whose scaled value (x - max) * 2^left_shift still
    fits the Q(integer_bits) range, floor((2^integer_bits - 1) * 2^(total - integer_bits) / 2^left_shift).
    In double like TFLite; every operand is a small integer or a power of two, so the value is exact."""
    max_input_rescaled = (1.0 * ((1 << integer_bits) - 1) * (1 << (total_signed_bits - integer_bits))
                          / (1 << left_shift))
    return math.floor(max_input_rescaled)


def softmax_params(input_scale: float, beta: float) -> SoftmaxParams:
    """TFLM's int8 SoftmaxPrepare: PreprocessSoftmaxScaling(beta, s_in, 5), i.e. real = min(beta * s_in * 2^26,
    2^31 - 1) in double from the float32 values (the cap only drops differences that would round to 0 anyway),
    then QuantizeMultiplierGreaterThanOne; diff_min = -CalculateInputRadius(5, left_shift)."""
    beta_d, scale_d = float(np.float32(beta)), float(np.float32(input_scale))
    real = min(beta_d * scale_d * (1 << (31 - SCALED_DIFF_INTEGER_BITS)), (1 << 31) - 1.0)
    q = quantize_multiplier_greater_than_one(real)
    return SoftmaxParams(q.multiplier, q.shift, -input_radius(SCALED_DIFF_INTEGER_BITS, q.shift))


def check_output_quantization(scale: float, zero_point: int) -> None:
    """TFLM's int8 SOFTMAX accepts only an output at scale exactly 1/256 in float32 and zero point -128 (the
    kernel writes round(p * 256) - 128); anything else is a ValueError naming what was found."""
    if int(zero_point) != OUTPUT_ZERO_POINT or np.float32(scale) != np.float32(OUTPUT_SCALE):
        raise ValueError(f"int8 SOFTMAX needs output scale 1/256 and zero point {OUTPUT_ZERO_POINT}, found scale "
                         f"{float(scale)!r} and zero point {int(zero_point)}")
