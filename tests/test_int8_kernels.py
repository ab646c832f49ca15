"""crtforge's int8 kernels (crt/src/int8.c) against TFLite Micro, bit for bit.

Each op: a random single-op int8 model (tests/int8_models.py) runs in TFLM's interpreter and in our C kernel
(a host build loaded with ctypes), with constants from tasks/compile/quantize.py; the outputs must be equal.
The Cortex-M4 DSP path runs the FC and conv cases in one bare-metal program under qemu and must equal the
host's portable results. The kernels also compile warning-free for every toolchain we target.
"""

from __future__ import annotations

import ctypes
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pytest

from tasks.compile import quantize as qz
from tasks.config import load_board
from tasks.compile.quantize import Activation
from tasks.toolchain.link import linker_script
from tests import int8_models as m

ROOT = Path(__file__).resolve().parent.parent
INT8_C = ROOT / "crt" / "src" / "int8.c"
INCLUDE = ROOT / "crt" / "include"
CORTEX_M = ROOT / "crt" / "boards" / "cortex-m"
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-std=c11"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# --- a Python model of TFLite's integer math (gemmlowp's fixed-point helpers) --------------------------


def _wrap32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def py_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    num = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    q = abs(num) // (1 << 31)  # C++ division truncates toward zero
    return q if num >= 0 else -q


def py_rounding_divide_by_pot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if (x & mask) > threshold else 0)


def py_mbqm(x: int, multiplier: int, shift: int) -> int:
    return py_rounding_divide_by_pot(py_srdhm(_wrap32(x << max(shift, 0)), multiplier), max(-shift, 0))


# --- the host build, through ctypes --------------------------------------------------------------------


class ChannelQuantC(ctypes.Structure):
    _fields_ = [("input_offset", ctypes.c_int32), ("output_offset", ctypes.c_int32),
                ("act_min", ctypes.c_int32), ("act_max", ctypes.c_int32),
                ("multiplier", ctypes.POINTER(ctypes.c_int32)), ("shift", ctypes.POINTER(ctypes.c_int32)),
                ("per_channel", ctypes.c_int32), ("fast", ctypes.POINTER(ctypes.c_int32)),
                ("scale", ctypes.POINTER(ctypes.c_float))]


SHAPE_FIELDS = ("batches", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h", "kernel_w",
                "stride_h", "stride_w", "dilation_h", "dilation_w", "pad_top", "pad_left", "depth_multiplier")


class ConvShapeC(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in SHAPE_FIELDS]


class AddParamsC(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in qz.AddParams.__dataclass_fields__]


class MulParamsC(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in qz.MulParams.__dataclass_fields__]


def _ptr(a: np.ndarray, ctype):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


@dataclass
class Prepared:
    """One FC or conv call's arguments, as the host test and the bare-metal program both pass them."""
    name: str
    kind: str  # "fc" or "conv"
    input: np.ndarray
    weights: np.ndarray  # packed: int8, or int16 for the _wide kernels
    bias: np.ndarray
    quant: qz.ChannelQuant
    shape: dict[str, int]
    out_size: int
    k: int
    fast: bool  # pass the one-multiply requantisation table

    @property
    def wide(self) -> bool:
        return self.weights.dtype == np.int16

    @property
    def fast_table(self) -> np.ndarray | None:
        return qz.fast_requant(self.quant.multipliers, self.quant.shifts) if self.fast else None


def prepare_weighted(case: m.WeightedCase, name: str, wide: bool = False, fast: bool = True) -> Prepared:
    q = qz.channel_quant(case.s_in, case.zp_in, case.s_w, case.s_out, case.zp_out, case.activation,
                         per_tensor_fc=case.op == "FULLY_CONNECTED" and not case.per_channel)
    out_size = int(np.prod(case.output_shape))
    pack = qz.pack_weights_wide if wide else qz.pack_weights
    if case.op == "FULLY_CONNECTED":
        b, k = case.input.shape
        return Prepared(name, "fc", case.input, pack(case.weights), case.bias, q,
                        {"batches": b, "in_features": k, "out_features": case.weights.shape[0]}, out_size, k, fast)
    return Prepared(name, "conv", case.input, pack(qz.conv_matrix(case.weights)), case.bias, q, conv_shape(case),
                    out_size, qz.conv_column(int(np.prod(case.weights.shape[1:]))), fast)


# Every weighted case runs four ways: int8 and int16 weights, each with and without the fast requantisation.
VARIANTS = [(wide, fast) for wide in (False, True) for fast in (False, True)]


def conv_shape(case) -> dict[str, int]:
    n, h, w, c = case.input.shape
    if isinstance(case, m.PoolCase):
        (kh, kw), dil, out_c, mult = case.filter, (1, 1), c, 1
    elif case.op == "DEPTHWISE_CONV_2D":
        kh, kw, dil, out_c, mult = case.weights.shape[1], case.weights.shape[2], case.dilation, case.weights.shape[3], \
            case.depth_multiplier
    else:
        kh, kw, dil, out_c, mult = case.weights.shape[1], case.weights.shape[2], case.dilation, case.weights.shape[0], 1
    ph = qz.padding(h, kh, case.stride[0], dil[0], case.same)
    pw = qz.padding(w, kw, case.stride[1], dil[1], case.same)
    return dict(batches=n, in_h=h, in_w=w, in_c=c, out_h=ph.out_size, out_w=pw.out_size, out_c=out_c, kernel_h=kh,
                kernel_w=kw, stride_h=case.stride[0], stride_w=case.stride[1], dilation_h=dil[0], dilation_w=dil[1],
                pad_top=ph.before, pad_left=pw.before, depth_multiplier=mult)


def _quant_c(q: qz.ChannelQuant, fast: bool) -> tuple[ChannelQuantC, tuple]:
    table = qz.fast_requant(q.multipliers, q.shifts) if fast else None
    if fast:
        assert table is not None, "the case has a shift the fast requantisation does not take: it would test nothing"
    keep = (np.ascontiguousarray(q.multipliers, np.int32), np.ascontiguousarray(q.shifts, np.int32),
            None if table is None else np.ascontiguousarray(table.reshape(-1), np.int32))
    qc = ChannelQuantC(q.input_offset, q.output_offset, q.act_min, q.act_max, _ptr(keep[0], ctypes.c_int32),
                       _ptr(keep[1], ctypes.c_int32), int(q.per_channel),
                       None if table is None else _ptr(keep[2], ctypes.c_int32))
    return qc, keep  # the arrays must outlive the call


def run_weighted(int8_lib: ctypes.CDLL, p: Prepared) -> np.ndarray:
    qc, _keep = _quant_c(p.quant, p.fast)
    x = np.ascontiguousarray(p.input, np.int8)
    w = np.ascontiguousarray(p.weights)
    wt = ctypes.c_int16 if p.wide else ctypes.c_int8
    suffix = "_wide" if p.wide else ""
    bias = np.ascontiguousarray(p.bias, np.int32)
    scratch = np.zeros(p.k, np.int16)
    out = np.zeros(p.out_size, np.int8)
    i8, i16, i32 = ctypes.c_int8, ctypes.c_int16, ctypes.c_int32
    if p.kind == "fc":
        s = p.shape
        rc = getattr(int8_lib, "crtforge_int8_fully_connected" + suffix)(
            ctypes.byref(qc), _ptr(x, i8), s["batches"], s["in_features"], _ptr(w, wt), _ptr(bias, i32),
            s["out_features"], _ptr(scratch, i16), _ptr(out, i8))
    else:
        shape = ConvShapeC(**p.shape)
        rc = getattr(int8_lib, "crtforge_int8_conv2d" + suffix)(ctypes.byref(shape), ctypes.byref(qc), _ptr(x, i8),
                                                           _ptr(w, wt), _ptr(bias, i32), _ptr(scratch, i16),
                                                           _ptr(out, i8))
    assert rc == 0
    return out


def run_depthwise(int8_lib: ctypes.CDLL, case: m.WeightedCase, fast: bool) -> np.ndarray:
    q = qz.channel_quant(case.s_in, case.zp_in, case.s_w, case.s_out, case.zp_out, case.activation)
    qc, _keep = _quant_c(q, fast)
    geo = conv_shape(case)
    shape = ConvShapeC(**geo)
    x = np.ascontiguousarray(case.input)
    w = qz.pack_depthwise(case.weights.reshape(case.weights.shape[1:]), geo["depth_multiplier"])
    scratch = np.zeros(geo["out_c"], np.int32)
    out = np.zeros(int(np.prod(case.output_shape)), np.int8)
    rc = int8_lib.crtforge_int8_depthwise_conv2d(ctypes.byref(shape), ctypes.byref(qc), _ptr(x, ctypes.c_int8),
                                            _ptr(w, ctypes.c_int16), _ptr(case.bias, ctypes.c_int32),
                                            _ptr(scratch, ctypes.c_int32), _ptr(out, ctypes.c_int8))
    assert rc == 0
    return out


# --- requantisation ------------------------------------------------------------------------------------


def test_quantize_rounds_and_saturates_as_onnxruntime(int8_lib):
    """x / scale in float32, ties to even (onnxruntime's QuantizeLinear, numpy's rint), then the zero point, and
    saturation; exactly, on ties, saturating values and random ones."""
    scale, zero_point = np.float32(0.05), -3
    x = np.concatenate([np.array([0.025, 0.075, -0.025, -0.125, 0.0, 1e9, -1e9, 6.5, -6.25], np.float32),
                        np.random.default_rng(7).normal(0, 4, 1000).astype(np.float32)])
    want = np.clip(np.rint(x / scale) + zero_point, -128, 127).astype(np.int8)
    out = np.zeros(x.size, np.int8)
    fn = int8_lib.crtforge_int8_quantize
    fn.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int32, ctypes.c_float, ctypes.c_int32,
                   ctypes.POINTER(ctypes.c_int8)]
    assert fn(_ptr(x, ctypes.c_float), x.size, scale, zero_point, _ptr(out, ctypes.c_int8)) == 0
    np.testing.assert_array_equal(out, want)
    assert fn(_ptr(x, ctypes.c_float), x.size, 0.0, 0, _ptr(out, ctypes.c_int8)) == -1


def test_quantize_multiplier_edges():
    # Exact powers of two: mantissa 0.5.
    assert qz.quantize_multiplier(1.0) == qz.QuantizedMultiplier(1 << 30, 1)
    assert qz.quantize_multiplier(0.25) == qz.QuantizedMultiplier(1 << 30, -1)
    # A mantissa that rounds up to 2^31 is halved and the shift bumped.
    assert qz.quantize_multiplier(1.0 - 2.0 ** -33) == qz.QuantizedMultiplier(1 << 30, 1)
    assert qz.quantize_multiplier(1.0 - 2.0 ** -31).multiplier == (1 << 31) - 1
    # Shift -31 still representable; below that, every bit would be shifted out: multiplier 0.
    assert qz.quantize_multiplier(2.0 ** -32) == qz.QuantizedMultiplier(1 << 30, -31)
    assert qz.quantize_multiplier(2.0 ** -33) == qz.QuantizedMultiplier(0, 0)
    assert qz.quantize_multiplier(0.0) == qz.QuantizedMultiplier(0, 0)
    # Ties of the Q31 rounding go away from zero (Python's round() would give 2^30): mantissa 2^30 + 0.5.
    assert qz.quantize_multiplier(0.5 + 2.0 ** -32).multiplier == (1 << 30) + 1


def test_per_tensor_fc_takes_the_float32_product():
    # s_in * s_w rounds differently in float32 than in double for these: TFLite's FC uses the float32 one.
    s_in, s_w, s_out = np.float32(0.1), np.float32(0.3), np.float32(0.7)
    f32 = float(np.float32(s_in * s_w)) / float(s_out)
    dbl = float(s_in) * float(s_w) / float(s_out)
    assert f32 != dbl
    q = qz.channel_quant(s_in, 0, np.array([s_w]), s_out, 0, Activation.NONE, per_tensor_fc=True)
    want = qz.quantize_multiplier(f32)
    assert (q.multipliers[0], q.shifts[0]) == (want.multiplier, want.shift)
    assert qz.quantize_multiplier(f32) != qz.quantize_multiplier(dbl)


def test_activation_range():
    assert qz.activation_range(Activation.NONE, 0.05, 3) == (-128, 127)
    assert qz.activation_range(Activation.RELU, 0.05, -20) == (-20, 127)
    assert qz.activation_range(Activation.RELU6, 0.05, -20) == (-20, 100)
    assert qz.activation_range(Activation.RELU6, 0.01, -20) == (-20, 127)  # 6 / 0.01 is past int8
    assert qz.activation_range(Activation.RELU, 0.05, -128) == (-128, 127)
    assert qz.activation_range(Activation.RELU_N1_TO_1, 0.1, 0) == (-10, 10)
    # zp + round(6 / scale) with the tie rounded away from zero: 6 / 12 = 0.5 gives 1, not 0.
    assert qz.activation_range(Activation.RELU6, 12.0, 0) == (0, 1)


def test_requantize_helpers_at_the_edges(int8_lib):
    f = int8_lib.crtforge_int8_srdhm
    assert f(INT32_MIN, INT32_MIN) == INT32_MAX  # the one saturating product
    assert f(INT32_MIN, INT32_MAX) == py_srdhm(INT32_MIN, INT32_MAX) == -INT32_MAX
    assert f(1 << 30, 1 << 30) == 1 << 29
    # Ties round up (toward +inf): 1.5 -> 2 but -1.5 -> -1 and -0.5 -> 0, as gemmlowp's nudge-then-truncate does.
    assert f(3, 1 << 30) == 2 and f(-3, 1 << 30) == -1 and f(-1, 1 << 30) == 0 and f(-5, 1 << 29) == -1
    assert all(f(a, b) == py_srdhm(a, b) for a in (-7, -3, -1, 0, 1, 3, 7, INT32_MAX) for b in (1 << 29, 1 << 30,
                                                                                                INT32_MAX))
    rdbpot = int8_lib.crtforge_int8_rounding_divide_by_pot
    assert [rdbpot(x, 1) for x in (3, -3, 1, -1, 2, -2)] == [2, -2, 1, -1, 1, -1]  # halves away from zero
    assert rdbpot(-6, 2) == -2 and rdbpot(-5, 2) == -1 and rdbpot(-7, 2) == -2
    assert rdbpot(INT32_MIN, 31) == -1 and rdbpot(INT32_MAX, 31) == 1
    mbqm = int8_lib.crtforge_int8_multiply_by_quantized_multiplier
    # The largest right shift: INT32_MAX * 0.5 / 2^31 is a half, which rounds away from zero to 1.
    assert mbqm(INT32_MAX, 1 << 30, -31) == py_mbqm(INT32_MAX, 1 << 30, -31) == 1
    assert mbqm(INT32_MIN, 1 << 30, -31) == py_mbqm(INT32_MIN, 1 << 30, -31) == -1
    # +-0.5 left after the right shift: away from zero (unlike SRDHM's own ties).
    assert mbqm(-(1 << 30), 1 << 30, -30) == -1 and mbqm(1 << 30, 1 << 30, -30) == 1
    assert mbqm(INT32_MIN, INT32_MAX, 0) == -INT32_MAX
    assert mbqm(1 << 28, 1 << 30, 4) == py_mbqm(1 << 28, 1 << 30, 4)  # x * 2^4 wraps like TFLite's


def test_requantize_matches_tflite_math(int8_lib):
    rng = np.random.default_rng(7)
    xs = [0, 1, -1, INT32_MIN, INT32_MAX, 1 << 30, -(1 << 30)] + [int(v) for v in rng.integers(INT32_MIN, INT32_MAX,
                                                                                             300)]
    xs += [int(v) for v in rng.integers(-(1 << 20), 1 << 20, 300)]
    reals = [1.0 - 2.0 ** -33, 2.0 ** -32, 2.0 ** -20, 0.5, 3.7] + list(10.0 ** rng.uniform(-9, 1, 40))
    mbqm = int8_lib.crtforge_int8_multiply_by_quantized_multiplier
    mismatches = []
    for real in reals:
        qm = qz.quantize_multiplier(real)
        for x in xs:
            got, want = mbqm(x, qm.multiplier, qm.shift), py_mbqm(x, qm.multiplier, qm.shift)
            if got != want:
                mismatches.append((x, qm, got, want))
            if qm.shift <= 0 and qm.multiplier:  # no wrap: within one LSB of the real product
                assert abs(want - x * qm.multiplier * 2.0 ** (qm.shift - 31)) <= 1.0
    assert not mismatches, mismatches[:5]


def py_fast_requant(x: int, row: np.ndarray) -> int:
    """crtforge_int8_channel_quant.fast's formula (the C's requantize_fast) in Python integers."""
    lo, hi, mult, high_shift = (int(v) for v in row)
    nudge = (hi << 32) | (lo & 0xFFFFFFFF)
    p = nudge - (1 << 31 if x < 0 else 0) + x * mult
    return (p >> 32) >> high_shift


def test_fast_requant_equals_the_two_roundings():
    rng = np.random.default_rng(8)
    xs = [0, 1, -1, 2, -2, 3, -3, INT32_MIN, INT32_MAX, INT32_MIN + 1, 1 << 30, -(1 << 30), (1 << 30) - 1]
    xs += [int(v) for v in rng.integers(INT32_MIN, INT32_MAX, 400)] + [int(v) for v in rng.integers(-4096, 4096, 400)]
    multipliers = [0, 1 << 30, (1 << 30) + 1, (1 << 31) - 1] + [int(v) for v in rng.integers(1 << 30, 1 << 31, 12)]
    mismatches = []
    for shift in (-1, -2, -7, -16, -30, -31):
        for mult in multipliers:
            row = qz.fast_requant(np.array([mult]), np.array([shift]))[0]
            # With mult 2^30 (a half), x = (2j + 1) 2^-shift leaves an exact half for RoundingDivideByPOT, both signs.
            ties = [(2 * j + 1) << -shift for j in range(-3, 3)] if mult == 1 << 30 else []
            for x in xs + [t for t in ties if INT32_MIN <= t <= INT32_MAX]:
                if py_fast_requant(x, row) != py_mbqm(x, mult, shift):
                    mismatches.append((x, mult, shift))
    assert not mismatches, mismatches[:5]
    # Shifts it does not take: none (left shifts, no shift, below -31 cannot come from QuantizeMultiplier).
    assert qz.fast_requant(np.array([1 << 30, 1 << 30]), np.array([-3, 0])) is None
    assert qz.fast_requant(np.array([1 << 30]), np.array([2])) is None


# --- ops against TFLM ----------------------------------------------------------------------------------

ACTS = {"none": Activation.NONE, "relu": Activation.RELU, "relu6": Activation.RELU6}
SEEDS = (11, 12)

FC_CASES = {  # batches, in, out, activation, per channel
    "b1-k256-n12-relu-pc": (1, 256, 12, "relu", True),
    "b3-k37-n13-none-pc": (3, 37, 13, "none", True),
    "b1-k64-n4-relu6-pc": (1, 64, 4, "relu6", True),
    "b2-k16-n8-relu6-pt": (2, 16, 8, "relu6", False),
    "b1-k5-n3-none-pt": (1, 5, 3, "none", False),
}
CONV_CASES = {  # input NHWC, out_c, kernel, stride, dilation, same, activation
    "1x1-c8-oc12-relu": ((1, 6, 5, 8), 12, (1, 1), (1, 1), (1, 1), False, "relu"),
    "3x3-s2-same-c5-oc7-relu6": ((1, 9, 8, 5), 7, (3, 3), (2, 2), (1, 1), True, "relu6"),
    "3x2-dil2x1-same-c3-oc5": ((1, 8, 9, 3), 5, (3, 2), (1, 2), (2, 1), True, "none"),
    "3x3-valid-b2-c4-oc8": ((2, 6, 6, 4), 8, (3, 3), (1, 1), (1, 1), False, "none"),
}
DW_CASES = {  # input NHWC, depth multiplier, kernel, stride, dilation, same, activation
    "3x3-same-m2": ((1, 7, 6, 5), 2, (3, 3), (1, 1), (1, 1), True, "none"),
    "3x3-s2-same-m1-relu6": ((1, 8, 8, 8), 1, (3, 3), (2, 2), (1, 1), True, "relu6"),
    "2x3-dil2x1-valid-m3-b2-relu": ((2, 6, 6, 3), 3, (2, 3), (1, 1), (2, 1), False, "relu"),
}
BINARY_CASES = {"nhwc-none": ((1, 5, 5, 3), "none"), "flat257-relu": ((257,), "relu"),
                "2x9-relu6": ((2, 9), "relu6")}
POOL_CASES = {  # input, filter, stride, same, activation
    "3x3-s2-same-relu": ((1, 7, 7, 3), (3, 3), (2, 2), True, "relu"),
    "2x2-s2-valid": ((1, 8, 6, 4), (2, 2), (2, 2), False, "none"),
    "3x2-s1-same-b2-relu6": ((2, 5, 7, 5), (3, 2), (1, 1), True, "relu6"),
}


def _ids(cases: dict) -> list:
    return [pytest.param(seed, *v, id=f"{k}-seed{seed}") for k, v in cases.items() for seed in SEEDS]


def fc_case(seed, b, k, n, act, pc) -> m.WeightedCase:
    return m.random_fully_connected(seed, b, k, n, ACTS[act], pc)


def conv_case(seed, shape, oc, kernel, stride, dil, same, act) -> m.WeightedCase:
    return m.random_conv2d(seed, shape, oc, kernel, stride, dil, same, ACTS[act])


@pytest.mark.parametrize("seed,b,k,n,act,pc", _ids(FC_CASES))
def test_fully_connected(int8_lib, seed, b, k, n, act, pc):
    case = fc_case(seed, b, k, n, act, pc)
    want = m.run_tflm(case.tflite, [case.input])
    for wide, fast in VARIANTS:
        got = run_weighted(int8_lib, prepare_weighted(case, "fc", wide, fast)).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"wide={wide} fast={fast}")


@pytest.mark.parametrize("seed,shape,oc,kernel,stride,dil,same,act", _ids(CONV_CASES))
def test_conv2d(int8_lib, seed, shape, oc, kernel, stride, dil, same, act):
    case = conv_case(seed, shape, oc, kernel, stride, dil, same, act)
    want = m.run_tflm(case.tflite, [case.input])
    for wide, fast in VARIANTS:
        got = run_weighted(int8_lib, prepare_weighted(case, "conv", wide, fast)).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"wide={wide} fast={fast}")


@pytest.mark.parametrize("seed,shape,mult,kernel,stride,dil,same,act", _ids(DW_CASES))
def test_depthwise_conv2d(int8_lib, seed, shape, mult, kernel, stride, dil, same, act):
    case = m.random_conv2d(seed, shape, 0, kernel, stride, dil, same, ACTS[act], depthwise=True,
                           depth_multiplier=mult)
    want = m.run_tflm(case.tflite, [case.input])
    for fast in (False, True):
        np.testing.assert_array_equal(run_depthwise(int8_lib, case, fast).reshape(want.shape), want, err_msg=f"fast={fast}")


@pytest.mark.parametrize("op", ["ADD", "MUL"])
@pytest.mark.parametrize("seed,shape,act", _ids(BINARY_CASES))
def test_add_mul(int8_lib, op, seed, shape, act):
    case = m.random_binary(seed, op, shape, ACTS[act])
    want = m.run_tflm(case.tflite, [case.a, case.b])
    out = np.zeros(case.a.size, np.int8)
    args = (case.s1, case.zp1, case.s2, case.zp2, case.s_out, case.zp_out, case.activation)
    if op == "ADD":
        params, fn = AddParamsC(**vars(qz.add_params(*args))), int8_lib.crtforge_int8_add
    else:
        params, fn = MulParamsC(**vars(qz.mul_params(*args))), int8_lib.crtforge_int8_mul
    a, b = np.ascontiguousarray(case.a), np.ascontiguousarray(case.b)
    assert fn(ctypes.byref(params), _ptr(a, ctypes.c_int8), _ptr(b, ctypes.c_int8), a.size,
              _ptr(out, ctypes.c_int8)) == 0
    np.testing.assert_array_equal(out.reshape(want.shape), want)


@pytest.mark.parametrize("op", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
@pytest.mark.parametrize("seed,shape,filt,stride,same,act", _ids(POOL_CASES))
def test_pool(int8_lib, op, seed, shape, filt, stride, same, act):
    case = m.random_pool(seed, op, shape, filt, stride, same, ACTS[act])
    want = m.run_tflm(case.tflite, [case.input])
    lo, hi = qz.activation_range(case.activation, float(case.s), case.zp)
    out = np.zeros(int(np.prod(case.output_shape)), np.int8)
    fn = int8_lib.crtforge_int8_avg_pool2d if op == "AVERAGE_POOL_2D" else int8_lib.crtforge_int8_max_pool2d
    x = np.ascontiguousarray(case.input)
    assert fn(ctypes.byref(ConvShapeC(**conv_shape(case))), lo, hi, _ptr(x, ctypes.c_int8), _ptr(out, ctypes.c_int8)) == 0
    np.testing.assert_array_equal(out.reshape(want.shape), want)


# --- every toolchain compiles the kernels clean --------------------------------------------------------

COMPILERS = {
    "host-gcc": ["gcc"],
    "host-clang": ["clang"],
    "cortex-m4-gcc": ["arm-none-eabi-gcc", *M4_FLAGS],
    "cortex-m3-gcc": ["arm-none-eabi-gcc", "-mcpu=cortex-m3", "-mthumb"],
    "cortex-m4-clang": ["clang", "--target=thumbv7em-none-eabihf", *M4_FLAGS, "-I/usr/lib/arm-none-eabi/include"],
}


@pytest.mark.parametrize("argv", COMPILERS.values(), ids=COMPILERS.keys())
def test_compiles_without_warnings(tmp_path, argv):
    proc = subprocess.run([*argv, "-O2", *WARNINGS, "-I", str(INCLUDE), "-c", str(INT8_C), "-o",
                           str(tmp_path / "int8.o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- the DSP path on a Cortex-M4 under qemu ------------------------------------------------------------

PROGRAM = jinja2.Template(r"""/* crtforge int8 DSP-path check, generated by tests/test_int8_kernels.py. */
#include <stddef.h>
#include <stdio.h>
#include "crtforge/int8.h"

static int16_t scratch[{{ scratch }}] __attribute__((aligned(4)));
{% for c in cases %}
/* {{ c.name }} */
static const int8_t in_{{ loop.index }}[] = { {{ c.input }} };
static const {{ c.wtype }} w_{{ loop.index }}[] __attribute__((aligned(4))) = { {{ c.weights }} };
static const int32_t b_{{ loop.index }}[] = { {{ c.bias }} };
static const int32_t m_{{ loop.index }}[] = { {{ c.mult }} };
static const int32_t s_{{ loop.index }}[] = { {{ c.shift }} };
{% if c.fast %}static const int32_t f_{{ loop.index }}[] = { {{ c.fast }} };
{% endif %}
static int8_t out_{{ loop.index }}[{{ c.out_size }}];
{% endfor %}
static void print(const char* name, const int8_t* y, int n) {
  printf("%s", name);
  for (int i = 0; i < n; ++i) printf(" %d", y[i]);
  printf("\n");
}

int main(void) {
{% for c in cases %}  {
    const crtforge_int8_channel_quant q = { {{ c.q }}, m_{{ loop.index }}, s_{{ loop.index }}, {{ c.per_channel }},
        {{ "f_%d" % loop.index if c.fast else "NULL" }}, NULL };
{% if c.kind == "fc" %}    int rc = crtforge_int8_fully_connected{{ c.suffix }}(&q, in_{{ loop.index }}, {{ c.shape.batches }},
        {{ c.shape.in_features }}, w_{{ loop.index }}, b_{{ loop.index }}, {{ c.shape.out_features }}, scratch,
        out_{{ loop.index }});
{% else %}    const crtforge_int8_conv_shape s = { {{ c.conv }} };
    int rc = crtforge_int8_conv2d{{ c.suffix }}(&s, &q, in_{{ loop.index }}, w_{{ loop.index }}, b_{{ loop.index }}, scratch,
        out_{{ loop.index }});
{% endif %}    if (rc != 0) { printf("error {{ c.name }} %d\n", rc); return 1; }
    print("{{ c.name }}", out_{{ loop.index }}, {{ c.out_size }});
  }
{% endfor %}  printf("crtforge-int8-done\n");
  return 0;
}
""")


def _c_list(a: np.ndarray) -> str:
    return ", ".join(str(int(v)) for v in np.asarray(a).reshape(-1))


def _program_case(p: Prepared) -> dict:
    q, table = p.quant, p.fast_table
    return {"name": p.name, "kind": p.kind, "input": _c_list(p.input), "weights": _c_list(p.weights),
            "wtype": "int16_t" if p.wide else "int8_t", "suffix": "_wide" if p.wide else "",
            "fast": "" if table is None else _c_list(table),
            "bias": _c_list(p.bias), "mult": _c_list(q.multipliers), "shift": _c_list(q.shifts),
            "out_size": p.out_size, "q": f"{q.input_offset}, {q.output_offset}, {q.act_min}, {q.act_max}",
            "per_channel": int(q.per_channel), "shape": p.shape,
            "conv": ", ".join(str(p.shape[f]) for f in SHAPE_FIELDS) if p.kind == "conv" else ""}


def test_dsp_path_on_cortex_m4_equals_portable(int8_lib, tmp_path):
    prepared = [prepare_weighted(fc_case(3, *v), f"fc-{k}-w{int(wide)}f{int(fast)}", wide, fast)
                for k, v in FC_CASES.items() for wide, fast in VARIANTS]
    prepared += [prepare_weighted(conv_case(3, *v), f"conv-{k}-w{int(wide)}f{int(fast)}", wide, fast)
                 for k, v in CONV_CASES.items() for wide, fast in VARIANTS]
    src = tmp_path / "main.c"
    src.write_text(PROGRAM.render(cases=[_program_case(p) for p in prepared], scratch=max(p.k for p in prepared)))
    (tmp_path / "link.ld").write_text(linker_script(load_board("mps2-an386")))
    elf = tmp_path / "int8.elf"
    subprocess.run(["arm-none-eabi-gcc", *M4_FLAGS, "-O2", *WARNINGS, "-I", str(INCLUDE), "--specs=rdimon.specs",
                    "-T", str(tmp_path / "link.ld"), "-Wl,--gc-sections", "-Wl,--no-warn-execstack",
                    "-Wl,--no-warn-rwx-segments", str(CORTEX_M / "startup.c"), str(INT8_C), str(src), "-o", str(elf)],
                   check=True, capture_output=True, text=True)
    proc = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor",
                           "none", "-serial", "none", "-semihosting-config", "enable=on,target=native", "-kernel",
                           str(elf)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "crtforge-int8-done" in proc.stdout, proc.stdout + proc.stderr
    got = {line.split()[0]: np.array(line.split()[1:], dtype=np.int64) for line in proc.stdout.splitlines()
           if line.startswith(("fc-", "conv-"))}
    for p in prepared:
        np.testing.assert_array_equal(got[p.name], run_weighted(int8_lib, p), err_msg=p.name)


# onnxruntime's requantisation and QuantizeLinear are float32 arithmetic (its quantize divides): on a core without
# an FPU, libgcc's IEEE soft float.
SOFT_FLOAT = {"__aeabi_i2f", "__aeabi_fmul", "__aeabi_fdiv", "__aeabi_fadd", "__aeabi_fsub", "__aeabi_f2iz",
              "__aeabi_fcmplt", "__aeabi_fcmpgt", "__aeabi_fcmple", "__aeabi_fcmpge"}


@pytest.mark.parametrize("cpu,flags,allowed", [
    ("cortex-m3", [], SOFT_FLOAT),
    ("cortex-m4", ["-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"], set()),
])
def test_cortex_m_build_needs_no_runtime_helpers(tmp_path, cpu, flags, allowed):
    """No calls into libgcc (64-bit division, CLZ; soft float where there is an FPU) from the kernels on
    Cortex-M3/M4: only libc's memset/memcpy may be left to link, and on the M3 the float32 operations of
    onnxruntime's requantisation."""
    obj = tmp_path / "int8.o"
    subprocess.run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", *flags, "-O2", *WARNINGS, "-I", str(INCLUDE),
                    "-c", str(INT8_C), "-o", str(obj)], check=True, capture_output=True, text=True)
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    assert set(undefined[1::2]) <= {"memset", "memcpy"} | allowed, undefined
