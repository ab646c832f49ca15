"""Build-time constants of crtforge's int8 MEAN (crt/include/crtforge/int8.h), computed exactly as TFLite does.

TFLite Micro runs every int8 MEAN through reference_ops::QuantizedMeanOrSum: PrepareMeanOrSum quantises
s_in / s_out (double from the float32 scales) with QuantizeMultiplier, and at Eval the kernel folds 1 / count
into that multiplier with an int64 division before requantising each sum once. The fold is done here instead, so
the device divides nothing; the kernel is bit-exact with TFLM only if the folded multiplier and shift are
identical, so each step copies TFLite's. TFLM takes this path also when input and output share scale and zero
point (older TFLite had a truncating division there), and keep_dims changes nothing but the output's shape.
Pure Python + numpy: it runs in the pipeline, never on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.compile.quantize import INT8_MAX, INT8_MIN, quantize_multiplier

# The kernel's shift range: RoundingDivideByPOT takes exponents up to 31, and a left shift of 31 or more would
# overflow TFLite's own `1 << left_shift` (no defined result to match).
MIN_SHIFT, MAX_SHIFT = -31, 30
INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class MeanParams:
    """crtforge_int8_mean_params: offsets as the other int8 kernels take them (minus the input zero point, the
    output zero point), s_in / s_out / reduced_count as multiplier * 2^shift / 2^31, and the count it was folded
    for (the kernel checks its `reduced` argument against it)."""
    input_offset: int
    output_offset: int
    multiplier: int
    shift: int
    reduced_count: int


def fold_count(multiplier: int, shift: int, count: int) -> tuple[int, int]:
    """QuantizedMeanOrSum's 1 / count fold: k = floor(log2 count), capped at 32 and at 31 + shift (so that the
    new shift stays >= -31), then multiplier * 2^k / count truncated (int64 in TFLite; all operands >= 0) and
    shift - k. 2^k <= count keeps the new multiplier below 2^31; it is no longer normalised to [2^30, 2^31)."""
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << k) // count, shift - k


def mean_params(input_scale: float, input_zp: int, output_scale: float, output_zp: int,
                reduced_count: int) -> MeanParams:
    """TFLM's int8 MEAN constants: QuantizeMultiplier((double)s_in / (double)s_out), then the 1 / count fold.
    ValueError for zero points outside int8, a count outside [1, 2^31 - 1], a non-positive scale, or a ratio so
    large that the folded shift exceeds MAX_SHIFT."""
    for name, zp in (("input", input_zp), ("output", output_zp)):
        if not INT8_MIN <= int(zp) <= INT8_MAX:
            raise ValueError(f"int8 MEAN: {name} zero point {int(zp)} is outside [{INT8_MIN}, {INT8_MAX}]")
    count = int(reduced_count)
    if not 1 <= count <= INT32_MAX:
        raise ValueError(f"int8 MEAN: reduced element count {count} is outside [1, 2^31 - 1]")
    s_in, s_out = float(np.float32(input_scale)), float(np.float32(output_scale))
    if not (s_in > 0.0 and s_out > 0.0 and math.isfinite(s_in) and math.isfinite(s_out)):
        raise ValueError(f"int8 MEAN: scales must be positive and finite, got input {s_in!r}, output {s_out!r}")
    q = quantize_multiplier(s_in / s_out)
    multiplier, shift = fold_count(q.multiplier, q.shift, count)
    if not MIN_SHIFT <= shift <= MAX_SHIFT:
        raise ValueError(f"int8 MEAN: s_in / s_out = {s_in / s_out!r} over {count} elements needs shift {shift}, "
                         f"outside [{MIN_SHIFT}, {MAX_SHIFT}]")
    return MeanParams(-int(input_zp), int(output_zp), multiplier, shift, count)


def reduction_layout(shape, axes) -> tuple[int, int, int]:
    """(outer, reduced, inner): the input of a MEAN over `axes` seen as [outer][reduced][inner], as
    crtforge_int8_mean takes it. Axes may be negative (counted from the end, as TFLite resolves them), repeated
    or in any order; the reduced ones must form one contiguous range, except that axes of size 1 anywhere are
    ignored (they change no offset). No axes reduce nothing: (size, 1, 1). ValueError naming the axes and the
    shape for an axis out of range, a dimension < 1, or reduced axes with a kept axis of size > 1 between them."""
    dims = tuple(int(d) for d in shape)
    given = [int(a) for a in np.asarray(axes, dtype=np.int64).reshape(-1)]
    if any(d < 1 for d in dims):
        raise ValueError(f"MEAN over axes {given} of shape {dims}: every dimension must be at least 1")
    bad = [a for a in given if not -len(dims) <= a < len(dims)]
    if bad:
        raise ValueError(f"MEAN over axes {given} of shape {dims}: axis {bad[0]} is out of range for rank "
                         f"{len(dims)}")
    reduced_axes = {a % len(dims) for a in given}
    # Only axes of size > 1 decide the layout; the reduced ones among them must be consecutive.
    significant = [(i, d) for i, d in enumerate(dims) if d > 1]
    flags = [i in reduced_axes for i, _ in significant]
    if True not in flags:
        return math.prod(dims), 1, 1
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    if not all(flags[first:last + 1]):
        kept = [i for (i, _), f in zip(significant[first:last + 1], flags[first:last + 1]) if not f]
        raise ValueError(f"MEAN over axes {given} of shape {dims}: the reduced axes are not one contiguous range "
                         f"(axis {kept[0]}, of size {dims[kept[0]]}, is kept between them); the int8 kernel "
                         f"reduces [outer][reduced][inner] only")
    sizes = [d for _, d in significant]
    return math.prod(sizes[:first]), math.prod(sizes[first:last + 1]), math.prod(sizes[last + 1:])
