"""crtforge's int8 MEAN (crt/src/int8.c) against TFLite Micro, bit for bit.

Each case: a one-op int8 MEAN model (shape, axes as a constant int32 tensor, keep_dims, input and output
quantisation chosen per case) runs in TFLM's interpreter and in our C kernel (a host build loaded with ctypes)
with constants from tasks/compile/int8_mean.py and the layout from its `reduction_layout`; the outputs must be
equal. TFLM runs QuantizedMeanOrSum for every int8 MEAN, so the cases cover both quantisations it could tell
apart (equal, and different scale or zero point), both keep_dims, the spatial mean over [1, 2] and other axes,
and inputs whose sums land exactly on a rounding tie, where TFLM's double rounding is not round(mean).
"""

from __future__ import annotations

import ctypes
import zlib

import numpy as np
import pytest

from tasks.compile import int8_mean as mn
from tasks.compile.quantize import round_half_away
from tests.int8_models import mean_model, reduced_shape



class MeanParamsC(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in mn.MeanParams.__dataclass_fields__]


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


def run_tflm(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """tests/int8_models.py `run_tflm` with an arena that fits the larger inputs here (MEAN also asks for an
    int32 scratch per output)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=len(tflite) * 10 + 8 * x.nbytes + 16384)
    interp.set_input(x, 0)
    interp.invoke()
    return interp.get_output(0)


def run_ours(int8_lib: ctypes.CDLL, params: mn.MeanParams, x: np.ndarray, axes: list[int], in_place: bool = False
             ) -> np.ndarray:
    """Our kernel on x, the output flat [outer * inner]."""
    x = np.ascontiguousarray(x, dtype=np.int8)
    outer, reduced, inner = mn.reduction_layout(x.shape, axes)
    assert outer * reduced * inner == x.size
    if in_place:
        buf = x.reshape(-1).copy()
        src = dst = buf
    else:
        src, dst = x, np.full(outer * inner, 0x55, np.int8)
    assert int8_lib.crtforge_int8_mean(ctypes.byref(MeanParamsC(**vars(params))), _ptr(src), outer, reduced, inner,
                                  _ptr(dst)) == 0
    return dst[:outer * inner].copy()


def check_case(int8_lib, shape, axes, keep_dims, s_in, zp_in, s_out, zp_out, x, in_place=False) -> np.ndarray:
    """Runs both and asserts equality; returns TFLM's output."""
    tfl = mean_model(shape, axes, keep_dims, s_in, zp_in, s_out, zp_out)
    want = run_tflm(tfl, x)
    assert want.shape == reduced_shape(shape, axes, keep_dims)
    _, reduced, _ = mn.reduction_layout(shape, axes)
    params = mn.mean_params(s_in, zp_in, s_out, zp_out, reduced)
    got = run_ours(int8_lib, params, x, axes, in_place).reshape(want.shape)
    np.testing.assert_array_equal(got, want, err_msg=f"{shape} axes={axes} keep_dims={keep_dims} s_in={s_in} "
                                  f"zp_in={zp_in} s_out={s_out} zp_out={zp_out} {params}")
    return want


def _rng(*key) -> np.random.Generator:
    """A generator seeded from the case's parameters (crc32, not hash(): str hashes differ between runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _int8(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def _scale(rng: np.random.Generator) -> float:
    return float(np.float32(10.0 ** rng.uniform(-3, 0)))


# --- the spatial mean over [1, 2] (keyword spotting, MobileNet heads) -------------------------------------

SPATIAL_SHAPES = [(1, 25, 5, 64), (1, 7, 7, 32), (2, 4, 6, 10), (3, 5, 1, 7), (1, 1, 1, 9)]


@pytest.mark.parametrize("keep_dims", [True, False], ids=["keep_dims", "no_keep_dims"])
@pytest.mark.parametrize("quant", ["equal", "different"])
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spatial_mean(int8_lib, shape, quant, keep_dims):
    rng = _rng(shape, quant, keep_dims)
    s_in, zp_in = _scale(rng), int(rng.integers(-100, 101)) or 17
    if quant == "equal":
        s_out, zp_out = s_in, zp_in
    else:
        s_out, zp_out = _scale(rng) / 4.0, int(rng.integers(-100, 101)) or -23
    for x in (_int8(rng, shape), np.full(shape, 127, np.int8), np.full(shape, -128, np.int8)):
        check_case(int8_lib, shape, [1, 2], keep_dims, s_in, zp_in, s_out, zp_out, x)


# --- other axes ---------------------------------------------------------------------------------------------

OTHER_AXES = [((2, 3, 5, 4), [1]), ((2, 3, 5, 4), [3]), ((2, 3, 5, 4), [2, 3]), ((3, 6, 5), [1]),
              ((2, 3, 5, 4), [0]), ((2, 3, 5, 4), [0, 1, 2, 3]), ((2, 3, 5, 4), [2, 1]), ((2, 3, 5, 4), [-3, -2]),
              ((4, 9), [-1]), ((6,), [0]), ((2, 1, 5, 4), [0, 2])]


@pytest.mark.parametrize("keep_dims", [True, False], ids=["keep_dims", "no_keep_dims"])
@pytest.mark.parametrize("quant", ["equal", "different"])
@pytest.mark.parametrize("shape,axes", OTHER_AXES,
                         ids=[f"{'x'.join(map(str, s))}-axes{','.join(map(str, a))}" for s, a in OTHER_AXES])
def test_other_axes(int8_lib, shape, axes, quant, keep_dims):
    rng = _rng(shape, axes, quant, keep_dims)
    s_in, zp_in = _scale(rng), int(rng.integers(-128, 128))
    s_out, zp_out = (s_in, zp_in) if quant == "equal" else (_scale(rng), int(rng.integers(-128, 128)))
    check_case(int8_lib, shape, axes, keep_dims, s_in, zp_in, s_out, zp_out, _int8(rng, shape))


def random_case(seed: int):
    """Rank 1 to 5, dimensions 1 to 9, one contiguous range of axes; the quantisation equal, equal in scale only,
    off by a power of two (the multiplier exact, so ties land exactly) or unrelated."""
    rng = np.random.default_rng(3000 + seed)
    rank = int(rng.integers(1, 6))
    shape = tuple(int(d) for d in rng.integers(1, 10, size=rank))
    start = int(rng.integers(0, rank))
    stop = int(rng.integers(start + 1, rank + 1))
    axes = [a - rank if rng.integers(0, 2) else a for a in rng.permutation(range(start, stop)).tolist()]
    s_in, zp_in = _scale(rng), int(rng.integers(-128, 128))
    mode = seed % 4
    if mode == 0:
        s_out, zp_out = s_in, zp_in
    elif mode == 1:
        s_out, zp_out = s_in, int(rng.integers(-128, 128))
    elif mode == 2:
        s_out, zp_out = float(np.float32(s_in * float(rng.choice([4.0, 0.5, 0.125, 1 / 64])))), int(
            rng.integers(-128, 128))
    else:
        s_out, zp_out = _scale(rng), int(rng.integers(-128, 128))
    return shape, axes, bool(rng.integers(0, 2)), s_in, zp_in, s_out, zp_out, _int8(rng, shape)


@pytest.mark.parametrize("seed", range(60))
def test_random_models(int8_lib, seed):
    check_case(int8_lib, *random_case(seed))


# --- rounding ties -----------------------------------------------------------------------------------------


def tie_input(rng: np.random.Generator, count: int, channels: int, zp: int, steps_per_unit: float) -> np.ndarray:
    """[1][count][1][channels] whose sums of x - zp put the real output (sum / steps_per_unit output steps, where
    steps_per_unit = count * s_out / s_in) exactly on j + f for f in 1/2, 1/4, 3/4, 3/8 (those that an integer sum
    can reach), both signs, j random. 3/8: where a first rounding up to 1/2 makes the second round up too."""
    fracs = [f for f in (0.5, 0.25, 0.75, 0.375) if (f * steps_per_unit).is_integer()]
    assert fracs, steps_per_unit
    x = np.zeros((1, count, 1, channels), np.int64)
    for c in range(channels):
        value = int(rng.integers(0, 30)) + fracs[(c // 2) % len(fracs)]
        target = int(round(value * steps_per_unit)) * (1 if c % 2 else -1)
        vals = np.full(count, target // count)  # spread over the elements, each within int8 once zp is added
        vals[: target - int(vals.sum())] += 1
        assert vals.sum() == target and (vals + zp >= -128).all() and (vals + zp <= 127).all(), (target, zp)
        x[0, :, 0, c] = vals + zp
    return x.astype(np.int8)


# count, s_in, zp_in, s_out, zp_out (scales powers of two apart, so every real value is exact), and whether TFLM's
# outputs differ from round-half-away of the exact value somewhere on these inputs: they do wherever srdhm's first
# rounding (odd sums) pushes a value onto the second rounding's tie, or a negative tie meets srdhm's tie toward
# +infinity; with 6 or 10 elements the truncated multiplier lands every tie as round-half-away does.
TIE_CASES = {"n2-equal": (2, 0.05, 7, 0.05, 7, True), "n4-equal": (4, 0.05, -3, 0.05, -3, True),
             "n8-equal": (8, 0.02, 0, 0.02, 0, True), "n6-equal": (6, 0.03, 11, 0.03, 11, False),
             "n10-equal": (10, 0.1, -50, 0.1, -50, False), "n4-half-scale": (4, 0.05, 20, 0.1, -9, True),
             "n4-double-scale": (4, 0.1, -5, 0.05, 4, True), "n16-quarter-scale": (16, 0.0125, 3, 0.05, 0, False),
             "n1-half-scale": (1, 0.05, 0, 0.1, 0, True)}


@pytest.mark.parametrize("keep_dims", [True, False], ids=["keep_dims", "no_keep_dims"])
@pytest.mark.parametrize("count,s_in,zp_in,s_out,zp_out,differs", TIE_CASES.values(), ids=TIE_CASES.keys())
def test_rounding_ties(int8_lib, count, s_in, zp_in, s_out, zp_out, differs, keep_dims):
    """Sums that land exactly on .5 (and .25, .75, .375) of an output step. TFLM's result is its rounding of the
    sum (srdhm ties toward +infinity, then RoundingDivideByPOT ties away from zero), not a rounding of the exact
    mean: where the table says so, a kernel that rounded the true mean half away from zero would fail."""
    steps_per_unit = count * float(np.float32(s_out)) / float(np.float32(s_in))
    x = tie_input(_rng(count, s_in, zp_in), count, 24, zp_in, steps_per_unit)
    want = check_case(int8_lib, x.shape, [1, 2], keep_dims, s_in, zp_in, s_out, zp_out, x)
    exact = (x.astype(np.int64) - zp_in).sum(axis=(1, 2)) / steps_per_unit
    assert (exact - np.floor(exact) == 0.5).any()  # the ties are really there
    single = np.clip(round_half_away(exact) + zp_out, -128, 127).reshape(want.shape)
    assert (want != single).any() == differs


def test_equal_quantization_rounds_twice(int8_lib):
    """With equal quantisation and 4 elements the multiplier is 2^30 * 2^-1: srdhm halves the sum with a tie
    toward +infinity, RoundingDivideByPOT halves again with a tie away from zero, so +0.25 gives +1 while -0.25
    gives 0, and -0.5 gives -1. These are TFLM's outputs, pinned here."""
    x = np.zeros((1, 2, 2, 8), np.int8)
    x[0, 0, 0] = [1, 2, 3, -1, -2, -3, 6, -6]  # sums; means 0.25, 0.5, 0.75, -0.25, -0.5, -0.75, 1.5, -1.5
    want = check_case(int8_lib, x.shape, [1, 2], False, 0.05, 0, 0.05, 0, x)
    np.testing.assert_array_equal(want.reshape(-1), [1, 1, 1, 0, -1, -1, 2, -2])


# --- sizes, saturation, in place ---------------------------------------------------------------------------


def test_large_spatial_mean_and_saturation(int8_lib):
    rng = np.random.default_rng(11)
    x = _int8(rng, (1, 64, 64, 3))  # 4096 elements per channel
    check_case(int8_lib, x.shape, [1, 2], True, 0.02, 11, 0.005, -9, x)
    # s_in / s_out = 4096: a left shift after the fold; the outputs saturate at both ends.
    x = np.concatenate([np.full((1, 3, 3, 4), 120, np.int8), np.full((1, 3, 3, 4), -120, np.int8)], axis=3)
    want = check_case(int8_lib, x.shape, [1, 2], True, 4.0, 0, 4.0 / 4096, 0, x)
    assert (want == 127).any() and (want == -128).any()
    # a tiny ratio: the fold is capped at 31 + shift; every output is the zero point
    x = _int8(rng, (1, 32, 32, 2))
    np.testing.assert_array_equal(check_case(int8_lib, x.shape, [1, 2], False, 1e-8, 11, 0.5, -9, x), -9)


def test_in_place(int8_lib):
    rng = np.random.default_rng(12)
    for shape, axes in (((2, 5, 5, 8), [1, 2]), ((3, 4, 1, 6), [1, 2]), ((4, 3, 2), [2]), ((3, 1, 5), [1])):
        x = _int8(rng, shape)
        check_case(int8_lib, shape, axes, True, 0.03, -7, 0.02, 5, x, in_place=True)


# --- bad arguments, constants, layout ----------------------------------------------------------------------


def test_bad_arguments_return_minus_one_and_write_nothing(int8_lib):
    good = mn.mean_params(0.1, 3, 0.1, 3, 4)
    x = np.full(8, 9, np.int8)
    out = np.full(8, 0x55, np.int8)

    def call(params, inp, outer, reduced, inner, dst):
        p = ctypes.byref(MeanParamsC(**vars(params))) if params is not None else None
        return int8_lib.crtforge_int8_mean(p, _ptr(inp) if inp is not None else None, outer, reduced, inner,
                                      _ptr(dst) if dst is not None else None)

    bad = [(None, x, 1, 4, 2, out), (good, None, 1, 4, 2, out), (good, x, 1, 4, 2, None),
           (good, x, 0, 4, 2, out), (good, x, -1, 4, 2, out), (good, x, 1, 0, 2, out), (good, x, 1, -4, 2, out),
           (good, x, 1, 4, 0, out), (good, x, 1, 4, -2, out),
           (good, x, 1, 3, 2, out),  # reduced != the count the multiplier was folded for
           (mn.MeanParams(**{**vars(good), "reduced_count": 1 << 16}), x, 1 << 16, 1 << 16, 1, out),  # 2^32 > int32
           (mn.MeanParams(**{**vars(good), "reduced_count": 1 << 20}), x, 1 << 12, 1 << 20, 1, out)]
    for field, value in (("input_offset", -128), ("input_offset", 129), ("output_offset", 128),
                         ("output_offset", -129), ("multiplier", -1), ("shift", -32), ("shift", 31)):
        bad.append((mn.MeanParams(**{**vars(good), field: value}), x, 1, 4, 2, out))
    for args in bad:
        assert call(*args) == -1, args
        assert (out == 0x55).all(), args
    assert call(good, x, 1, 4, 2, out) == 0 and (out[:2] == 9).all() and (out[2:] == 0x55).all()  # 6 + 3


def test_mean_params_constants():
    # equal quantisation: 1.0 is 2^30 * 2^1; over 4 elements the fold takes k = 2 and leaves 2^30 * 2^-1
    assert mn.mean_params(0.05, 0, 0.05, 0, 4) == mn.MeanParams(0, 0, 1 << 30, -1, 4)
    assert mn.mean_params(0.05, -3, 0.05, 7, 1) == mn.MeanParams(3, 7, 1 << 30, 1, 1)
    # not a power of two: 2^30 * 4 // 6, truncated as TFLite's int64 division
    assert mn.mean_params(0.03, 0, 0.03, 0, 6) == mn.MeanParams(0, 0, (1 << 32) // 6, -1, 6)
    # s_in / s_out in double from the float32 scales, as TFLM's Prepare: 0.1f / 0.3f quantises to 1431655730, the
    # double 0.1 / 0.3 to 1431655765; over 3 elements k = 1
    assert mn.mean_params(0.1, 0, 0.3, 0, 3) == mn.MeanParams(0, 0, (1431655730 << 1) // 3, -2, 3)
    # the fold is capped at 31 + shift (here shift -26 before the fold: k = 5 of floor(log2 1024) = 10)
    p = mn.mean_params(1e-8, 0, 1.0, 0, 1024)
    assert p.shift == -31
    assert mn.fold_count(1 << 30, 1, 1 << 40) == ((1 << 30 << 32) >> 40, 1 - 32)  # and at 32


def test_mean_params_rejects():
    with pytest.raises(ValueError, match="input zero point 128"):
        mn.mean_params(0.1, 128, 0.1, 0, 4)
    with pytest.raises(ValueError, match="output zero point -129"):
        mn.mean_params(0.1, 0, 0.1, -129, 4)
    with pytest.raises(ValueError, match="count 0"):
        mn.mean_params(0.1, 0, 0.1, 0, 0)
    with pytest.raises(ValueError, match="positive"):
        mn.mean_params(0.0, 0, 0.1, 0, 4)
    with pytest.raises(ValueError, match="shift 31"):
        mn.mean_params(2.0 ** 30, 0, 1.0, 0, 1)


def test_reduction_layout():
    assert mn.reduction_layout((1, 25, 5, 64), [1, 2]) == (1, 125, 64)
    assert mn.reduction_layout((2, 3, 5, 4), [2, 1]) == (2, 15, 4)
    assert mn.reduction_layout((2, 3, 5, 4), [-1]) == (30, 4, 1)
    assert mn.reduction_layout((2, 3, 5, 4), [0, 0]) == (1, 2, 60)
    assert mn.reduction_layout((2, 1, 5, 4), [0, 2]) == (1, 10, 4)  # the size-1 axis between changes nothing
    assert mn.reduction_layout((2, 3), []) == (6, 1, 1)
    assert mn.reduction_layout((2, 1, 3), [1]) == (6, 1, 1)
    assert mn.reduction_layout((), []) == (1, 1, 1)
    assert mn.reduction_layout((3, 6, 5), np.array([1], np.int32)) == (3, 6, 5)


def test_reduction_layout_rejects_non_contiguous_axes():
    with pytest.raises(ValueError, match=r"axes \[1, 3\] of shape \(2, 3, 5, 4\).*not one contiguous range"):
        mn.reduction_layout((2, 3, 5, 4), [1, 3])
    with pytest.raises(ValueError, match=r"axes \[0, -1\] of shape \(2, 3, 4\).*axis 1, of size 3"):
        mn.reduction_layout((2, 3, 4), [0, -1])
    with pytest.raises(ValueError, match=r"axes \[4\] of shape \(2, 3, 5, 4\).*out of range"):
        mn.reduction_layout((2, 3, 5, 4), [4])
    with pytest.raises(ValueError, match=r"axes \[1\] of shape \(2, 0, 4\).*at least 1"):
        mn.reduction_layout((2, 0, 4), [1])
