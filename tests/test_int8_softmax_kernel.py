"""crtforge's int8 SOFTMAX (crt/src/int8.c) against TFLite Micro, bit for bit.

Each case: a one-op int8 SOFTMAX model (input scale, zero point and beta chosen per case) runs in TFLM's
interpreter and in our C kernel (a host build loaded with ctypes) with constants from
tasks/compile/int8_softmax.py; the outputs must be equal. Besides random inputs every model also gets the edge
rows: all equal, a single +127 among -128s, and a ramp over the whole int8 range (differences beyond diff_min,
whose exp is 0, wherever beta * s_in is large enough for diff_min to be above -255).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tasks.compile import int8_softmax as sm
from tests import int8_models as m
from tests.int8_models import fb

MAX_DEPTH = sm.MAX_DEPTH  # CRTFORGE_INT8_SOFTMAX_MAX_DEPTH


class SoftmaxParamsC(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in sm.SoftmaxParams.__dataclass_fields__]


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


def softmax_model(shape: tuple[int, ...], scale: float, zero_point: int, beta: float) -> bytes:
    """A one-op int8 SOFTMAX with the given input quantisation and beta (tests/int8_models.py's `softmax` fixes
    both); the output at TFLite's required 1/256, -128."""
    g = m._Graph()
    xi = g.add(m._Tensor(shape, fb.TensorType.INT8, [float(np.float32(scale))], [zero_point]))
    yi = g.add(m._Tensor(shape, fb.TensorType.INT8, [sm.OUTPUT_SCALE], [sm.OUTPUT_ZERO_POINT]))
    opt = fb.SoftmaxOptionsT()
    opt.beta = float(beta)
    return g.to_bytes(fb.BuiltinOperator.SOFTMAX, fb.BuiltinOptions.SoftmaxOptions, opt, [xi], [yi])


def run_tflm_big(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """tests/int8_models.py `run_tflm` with an arena that fits long rows (its default, 10x the model's size,
    holds about 3 KB of tensors)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=len(tflite) * 10 + 4 * x.nbytes + 16384)
    interp.set_input(x, 0)
    interp.invoke()
    return interp.get_output(0)


def run_ours(int8_lib: ctypes.CDLL, params: sm.SoftmaxParams, x: np.ndarray, in_place: bool = False) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.int8)
    rows, depth = int(np.prod(x.shape[:-1])), x.shape[-1]
    out = x.copy() if in_place else np.full(x.shape, 0x55, np.int8)
    src = out if in_place else x
    assert int8_lib.crtforge_int8_softmax(ctypes.byref(SoftmaxParamsC(**vars(params))), _ptr(src), rows, depth,
                                     _ptr(out)) == 0
    return out


def edge_inputs(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    rows, depth = shape
    one_hot = np.full(shape, -128, np.int8)
    one_hot[np.arange(rows), rng.integers(0, depth, size=rows)] = 127
    return {
        "random": rng.integers(-128, 128, size=shape).astype(np.int8),
        "all-equal": np.repeat(rng.integers(-128, 128, size=(rows, 1)), depth, axis=1).astype(np.int8),
        "one-127-rest-minus-128": one_hot,
        "ramp": np.tile(np.linspace(-128, 127, depth).round(), (rows, 1)).astype(np.int8),
    }


def random_case(seed: int) -> tuple[tuple[int, int], float, int, float]:
    rng = np.random.default_rng(1000 + seed)
    shape = (int(rng.integers(1, 5)), int(rng.choice([2, 5, 10, 12, 33, 100])))
    scale = float(np.float32(10.0 ** rng.uniform(-3, 0)))
    return shape, scale, int(rng.integers(-100, 101)), float(rng.choice([1.0, 1.0, 0.5, 2.0, 0.3]))


@pytest.mark.parametrize("seed", range(40))
def test_softmax_random_models(int8_lib, seed):
    shape, scale, zp, beta = random_case(seed)
    tfl, params = softmax_model(shape, scale, zp, beta), sm.softmax_params(scale, beta)
    for name, x in edge_inputs(np.random.default_rng(seed), shape).items():
        want = m.run_tflm(tfl, [x])
        np.testing.assert_array_equal(run_ours(int8_lib, params, x), want, err_msg=f"{name}: {shape} s={scale} "
                                      f"zp={zp} beta={beta} {params}")


@pytest.mark.parametrize("seed", range(12))
def test_softmax_many_rows(int8_lib, seed):
    """256 random rows per model: an error in the last bits of the reciprocal (say, one Newton-Raphson step too
    few) moves only an output here and there, where p * 256 lies near a rounding tie."""
    rng = np.random.default_rng(2000 + seed)
    depth, beta = int(rng.choice([2, 5, 10, 12, 33, 100])), float(rng.choice([1.0, 0.5, 2.0]))
    scale, zp = float(np.float32(10.0 ** rng.uniform(-3, 0))), int(rng.integers(-100, 101))
    x = rng.integers(-128, 128, size=(256, depth)).astype(np.int8)
    want = run_tflm_big(softmax_model(x.shape, scale, zp, beta), x)
    np.testing.assert_array_equal(run_ours(int8_lib, sm.softmax_params(scale, beta), x), want)


# (scale, beta) where beta * s_in >= 1/16, so diff_min is above -255 and int8 differences can pass it; the last
# caps the real multiplier at 2^31 - 1 (left shift 31, diff_min 0: only the maxima survive).
CUTOFF_CASES = {"diff_min-248": (0.1, 1.0), "diff_min-62": (0.3, 1.0), "diff_min-31": (0.5, 1.0),
                "diff_min-7": (1.0, 2.0), "capped-diff_min-0": (0.9, 50.0)}


@pytest.mark.parametrize("scale,beta", CUTOFF_CASES.values(), ids=CUTOFF_CASES.keys())
def test_differences_beyond_diff_min(int8_lib, scale, beta):
    params = sm.softmax_params(scale, beta)
    dm = params.diff_min
    assert -255 < dm <= 0
    # Each row: the max, then differences at diff_min + 1, diff_min, diff_min - 1, diff_min - 2 and far below.
    tops = [127, 60, -128 - dm + 1]
    x = np.array([[t] + [min(max(t + dm + k, -128), t) for k in (1, 0, -1, -2)] + [-128] * 3 for t in tops], np.int8)
    diffs = x.astype(np.int32) - x.max(axis=1, keepdims=True)
    assert (diffs < dm).any() and (diffs == dm).any()  # the cut-off really is exercised, on both sides
    want = m.run_tflm(softmax_model(x.shape, scale, 7, beta), [x])
    np.testing.assert_array_equal(run_ours(int8_lib, params, x), want)
    assert (want[diffs < dm] == -128).all()


def test_capped_multiplier_constants():
    assert sm.softmax_params(0.9, 50.0) == sm.SoftmaxParams((1 << 31) - 1, 31, 0)
    p = sm.softmax_params(0.5, 1.0)  # 2^25 exactly: frexp gives 0.5 * 2^26
    assert p == sm.SoftmaxParams(1 << 30, 26, -31)


def test_deep_rows_and_in_place(int8_lib):
    """depth 511 all equal is the deepest uniform row TFLM accepts (its final shift is then exactly 31); depth
    1000 with one dominant value keeps TFLM's sum small. In place: output buffer == input buffer."""
    rng = np.random.default_rng(5)
    scale, beta = 0.05, 1.0
    params = sm.softmax_params(scale, beta)
    for shape, x in (((2, 511), np.full((2, 511), 9, np.int8)),
                     ((2, 1000), np.where(np.arange(1000) == 17, 127, rng.integers(-128, 0, size=(2, 1000))))):
        x = x.astype(np.int8)
        want = run_tflm_big(softmax_model(shape, scale, -3, beta), x)
        np.testing.assert_array_equal(run_ours(int8_lib, params, x), want)
        np.testing.assert_array_equal(run_ours(int8_lib, params, x, in_place=True), want)


def test_sum_of_512_or_more_rounds_every_output_to_minus_128(int8_lib):
    """Where TFLM stops on its TFLITE_CHECK (a sum of exps >= 512), every p <= 1/512 rounds to output -128."""
    params = sm.softmax_params(0.05, 1.0)
    np.testing.assert_array_equal(run_ours(int8_lib, params, np.zeros((1, 600), np.int8)), -128)
    np.testing.assert_array_equal(run_ours(int8_lib, params, np.full((1, MAX_DEPTH), 5, np.int8)), -128)


def test_bad_arguments_return_minus_one_and_write_nothing(int8_lib):
    good = sm.softmax_params(0.1, 1.0)
    x = np.zeros(8, np.int8)
    out = np.full(8, 0x55, np.int8)

    def call(params, inp, rows, depth, dst):
        p = ctypes.byref(SoftmaxParamsC(**vars(params))) if params is not None else None
        return int8_lib.crtforge_int8_softmax(p, _ptr(inp) if inp is not None else None, rows, depth,
                                         _ptr(dst) if dst is not None else None)

    bad = [(None, x, 1, 8, out), (good, None, 1, 8, out), (good, x, 1, 8, None), (good, x, 0, 8, out),
           (good, x, -1, 8, out), (good, x, 1, 0, out), (good, x, 1, -3, out), (good, x, 1, MAX_DEPTH + 1, out)]
    for field, value in (("input_left_shift", -1), ("input_left_shift", 32), ("diff_min", 1),
                         ("input_multiplier", -1)):
        bad.append((sm.SoftmaxParams(**{**vars(good), field: value}), x, 1, 8, out))
    for args in bad:
        assert call(*args) == -1, args
        assert (out == 0x55).all(), args
    assert call(good, x, 1, 8, out) == 0 and (out == -96).all()  # 1/8 * 256 - 128


def test_output_quantization_check():
    sm.check_output_quantization(1.0 / 256.0, -128)
    sm.check_output_quantization(np.float32(0.00390625), np.int64(-128))
    with pytest.raises(ValueError, match=r"found scale 0\.00390625 and zero point 0"):
        sm.check_output_quantization(1.0 / 256.0, 0)
    with pytest.raises(ValueError, match=r"found scale 0\.004 and zero point -128"):
        sm.check_output_quantization(0.004, -128)


def test_multiplier_must_exceed_one():
    with pytest.raises(ValueError, match="must exceed 1"):
        sm.softmax_params(1e-9, 1.0)
    with pytest.raises(ValueError, match="must exceed 1"):
        sm.softmax_params(0.1, 0.0)
