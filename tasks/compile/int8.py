"""crtforge's integer path for full-integer int8 models (TFLite, and ONNX QDQ): the external codegen 'crtforge_int8'.

TVM 0.27's TFLite frontend has no quantized dialect: each int8 op arrives as dequantize -> float op -> quantize
(-> clip for a fused activation), and FoldConstant would turn every dequantize(W) into float32 weights. So this
runs first, on the imported module: FuseOpsByPattern groups each such cluster into a function, RunCodegen hands
them to `relax.ext.crtforge_int8`, which emits one C function per op calling crt/src/int8.c with its constants
(packed int8 weights, int32 bias, multipliers and shifts computed as TFLite does, tasks/compile/quantize.py):
the small ones inline as const arrays, the weights as constants the module names, which codegen links as data
with the rest of the model's weights (weights.S). Between two such calls the activations stay int8, so the arena
holds int8 tensors.

ONNX QDQ models (onnxruntime's quantiser) import into the same clusters, in NCHW: their Conv and Gemm/MatMul take
the same kernels with onnxruntime's requantisation (`Rounding.ONNXRUNTIME`: one float32 scale per channel), a
Conv's tensors transposed to NHWC around the call; their other quantised ops stay float (_ONNXRUNTIME_OPS).

A cluster the kernels do not implement exactly (they take int8 activations with a per-tensor scale and zero point,
symmetric int8 weights, int32 bias) does not match and runs through TVM's float path instead; `op_summary` counts
both, so the report says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.compile import int8_mean as mn
from tasks.compile import int8_softmax as sm
from tasks.compile import quantize as qz
from tasks.compile.plan import workspace_size
from tasks.compile.quantize import Activation
from tasks.errors import CrtforgeError
from tasks.naming import ModelSymbols

CODEGEN = "crtforge_int8"


class Int8Error(CrtforgeError):
    """A matched int8 op the kernels cannot express after all: names the op and why."""


# --- patterns ------------------------------------------------------------------------------------------------

def _dequantize(x):
    from tvm.relax.dpl import is_const, is_op
    return is_op("relax.dequantize")(x, is_const(), is_const())


def _requantize(body, clip: bool):
    """quantize(body) and, for a fused activation, the clip TVM adds in the int8 domain."""
    from tvm.relax.dpl import is_const, is_op, wildcard
    out = is_op("relax.quantize")(body, is_const(), is_const())
    return is_op("relax.clip")(out, wildcard(), wildcard()) if clip else out


def _patterns() -> list[tuple[str, Any]]:
    """(name, pattern), longest first: FuseOpsByPattern tries them in order at every node."""
    from tvm.relax.dpl import is_const, is_op, wildcard

    out = []
    for clip in (True, False):
        # TFLite's [out][in] weights arrive as dequantize(permute_dims(W)); an ONNX Gemm's as
        # permute_dims(dequantize(W)), a MatMul's [in][out] as dequantize(W).
        weight = (_dequantize(is_op("relax.permute_dims")(is_const()) | is_const())
                  | is_op("relax.permute_dims")(_dequantize(is_const())))
        matmul = is_op("relax.matmul")(_dequantize(wildcard()), weight)
        for bias in (True, False):
            body = is_op("relax.add")(matmul, _dequantize(is_const())) if bias else matmul
            out.append(("fully_connected", _requantize(body, clip)))
        conv_weight = _dequantize(is_const())
        conv_weight = is_op("relax.reshape")(conv_weight, wildcard()) | conv_weight
        conv = is_op("relax.nn.conv2d")(_dequantize(wildcard()), conv_weight)
        conv_bias = _dequantize(is_const())
        conv_bias = is_op("relax.reshape")(conv_bias, wildcard()) | conv_bias  # ONNX's [1][C][1][1]
        for bias in (True, False):
            body = is_op("relax.add")(conv, conv_bias) if bias else conv
            out.append(("conv2d", _requantize(body, clip)))
        for op, name in (("relax.add", "add"), ("relax.multiply", "mul")):
            body = is_op(op)(_dequantize(wildcard()), _dequantize(wildcard()))
            # ADD and MUL get their fused activation in the float domain, before quantize.
            body = is_op("relax.nn.relu")(body) | is_op("relax.clip")(body, wildcard(), wildcard()) | body
            out.append((name, _requantize(body, clip)))
        avg = is_op("relax.astype")(is_op("relax.nn.avg_pool2d")(is_op("relax.astype")(wildcard())))
        mx = is_op("relax.nn.max_pool2d")(wildcard())
        for name, pool in (("avg_pool2d", avg), ("max_pool2d", mx)):
            out.append((name, is_op("relax.clip")(pool, wildcard(), wildcard()) if clip else pool))
    # SOFTMAX has no fused activation. (TVM's frontend drops beta; the importer refuses a beta other than 1.)
    out.append(("softmax", _requantize(is_op("relax.nn.softmax")(_dequantize(wildcard())), False)))
    out.append(("mean", _requantize(is_op("relax.mean")(_dequantize(wildcard())), False)))
    # A QDQ model's input QuantizeLinear (partition matches it only on the model's inputs).
    out.append(("quantize", is_op("relax.quantize")(wildcard(), is_const(), is_const())))
    return out


# --- reading a matched function ------------------------------------------------------------------------------

def _shape(expr) -> tuple[int, ...]:
    return tuple(int(v) for v in expr.ty.shape.values)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


class _Reader:
    """A matched cluster: its result and, for every Var in it, what the Var is bound to. The cluster's inputs are
    the Vars (or function parameters) that nothing in it binds."""

    def __init__(self, result, bound: dict[Any, Any]):
        self.bound = bound
        self.result = self.value(result)

    @classmethod
    def of_function(cls, func) -> "_Reader":
        bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        return cls(func.body.body, bound)

    def value(self, expr):
        while expr in self.bound:
            expr = self.bound[expr]
        return expr

    def op(self, expr) -> str | None:
        from tvm import ir, relax
        expr = self.value(expr)
        if isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op):
            return expr.op.name
        return None

    def arg(self, call, i: int):
        return self.value(call.args[i])


def _const(expr) -> np.ndarray:
    from tvm import ir
    if not isinstance(expr, ir.GenericConst):
        raise Int8Error(f"expected a constant, found {type(expr).__name__}")
    return expr.value.numpy()


def _scalar(expr) -> float | int:
    a = _const(expr)
    if a.size != 1:
        raise Int8Error(f"expected one value, found shape {a.shape}")
    return a.reshape(-1)[0].item()


def _prim(expr) -> float:
    """A PrimValue's number (clip bounds)."""
    v = expr.value
    return float(getattr(v, "value", v))


@dataclass(frozen=True)
class Quant:
    scale: float
    zero_point: int


def _dequant_params(r: _Reader, call) -> Quant:
    return Quant(float(np.float32(_scalar(r.arg(call, 1)))), int(_scalar(r.arg(call, 2))))


def _activation(lo: float, hi: float, out: Quant) -> Activation:
    """The fused activation behind TVM's clip bounds (Python's round of x / scale, ties to even), so that the
    limits can be recomputed as TFLite does (float32 division, ties away from zero)."""
    def tvm_q(x: float) -> float:
        return float(round(x / out.scale) + out.zero_point)

    candidates = {
        Activation.RELU: (max(-128.0, tvm_q(0.0)), 127.0),
        Activation.RELU6: (max(-128.0, tvm_q(0.0)), min(127.0, tvm_q(6.0))),
        Activation.RELU_N1_TO_1: (max(-128.0, tvm_q(-1.0)), min(127.0, tvm_q(1.0))),
    }
    for act, bounds in candidates.items():
        if bounds == (lo, hi):
            return act
    if (lo, hi) == (-128.0, 127.0):
        return Activation.NONE
    raise Int8Error(f"clip({lo:g}, {hi:g}) is not a TFLite fused activation of scale {out.scale:g}, zero point "
                    f"{out.zero_point}")


# --- the ops ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CArray:
    name: str
    ctype: str
    values: np.ndarray
    linked: bool = False  # the weights: a constant of the module, linked as data (weights.S), declared extern


@dataclass(frozen=True)
class Int8Kernel:
    """One matched op as the C that implements it: constants, the kernel call, and what it needs."""
    symbol: str
    op: str                   # the TFLite op it came from, e.g. FULLY_CONNECTED
    summary: str              # shapes and quantisation, for the comment above the function
    inputs: int               # tensor arguments before the output
    arrays: tuple[CArray, ...]
    statics: tuple[str, ...]  # C definitions of the parameter structs
    call: str                 # the kernel call; x0.., y and scratch are in scope
    workspace_bytes: int = 0
    kernel: str = ""          # the crt function called
    before: tuple[str, ...] = ()  # C statements before the call (ONNX's NCHW tensors transposed to NHWC)
    after: tuple[str, ...] = ()   # and after it, when it succeeded


def _requant_tail(r: _Reader) -> tuple[Any, Quant, float, float]:
    """The quantize call, the output's quantisation and the clip bounds (int8's range when no clip)."""
    res = r.result
    lo, hi = -128.0, 127.0
    if r.op(res) == "relax.clip":
        lo, hi = _prim(res.args[1]), _prim(res.args[2])
        res = r.arg(res, 0)
    if r.op(res) != "relax.quantize":
        raise Int8Error("expected quantize at the end")
    return res, _dequant_params(r, res), lo, hi


def _check_int8(exprs: dict[str, Any]) -> None:
    for what, e in exprs.items():
        if _dtype(e) != "int8":
            raise Int8Error(f"{what} is {_dtype(e)}; the integer kernels take int8")


def _weighted_tail(r: _Reader, quant_call) -> tuple[Any, np.ndarray | None]:
    """The float op under quantize, and the int32 bias added to it (None when there is none)."""
    body = r.arg(quant_call, 0)
    if r.op(body) == "relax.add":
        bias_deq = r.arg(body, 1)
        if r.op(bias_deq) == "relax.reshape":
            bias_deq = r.arg(bias_deq, 0)
        bias = _const(r.arg(bias_deq, 0))
        if bias.dtype != np.int32:
            raise Int8Error(f"bias is {bias.dtype}; the integer kernels take int32")
        return r.arg(body, 0), bias.reshape(-1).astype(np.int32)
    return body, None


def _weight_scales(r: _Reader, deq, channel_axis: int | None = None) -> np.ndarray:
    """The float32 scales of the weights under a dequantize, which must be symmetric (zero point 0); with
    several, along `channel_axis` (the output channels' axis) when one is given."""
    if np.any(_const(r.arg(deq, 2)) != 0):
        raise Int8Error("weights have a nonzero zero point; the integer kernels take symmetric weights")
    scales = _const(r.arg(deq, 1)).astype(np.float32).reshape(-1)
    if channel_axis is not None and len(scales) > 1 and int(deq.attrs.axis) != channel_axis:
        raise Int8Error(f"weight scales along axis {int(deq.attrs.axis)}; the kernels take them per output "
                        f"channel (axis {channel_axis})")
    return scales


def _fully_connected(symbol: str, r: _Reader, wide: bool, rounding: qz.Rounding) -> Int8Kernel:
    quant_call, out_q, lo, hi = _requant_tail(r)
    matmul, bias = _weighted_tail(r, quant_call)
    x_deq, w_expr = r.arg(matmul, 0), r.arg(matmul, 1)
    x_q = _dequant_params(r, x_deq)
    if r.op(w_expr) == "relax.permute_dims":  # ONNX Gemm: transpose(dequantize([out][in]))
        _check_transpose(w_expr)
        w_deq = r.arg(w_expr, 0)
        src = r.arg(w_deq, 0)
        matrix, s_w = _const(src), _weight_scales(r, w_deq, channel_axis=0)
    else:
        w_deq = w_expr
        src = r.arg(w_deq, 0)
        if r.op(src) == "relax.permute_dims":  # TFLite's [out][in], transposed by the frontend
            _check_transpose(src)
            matrix, s_w = _const(r.arg(src, 0)), _weight_scales(r, w_deq)
        else:  # [in][out]: an ONNX MatMul
            matrix, s_w = _const(src).T, _weight_scales(r, w_deq, channel_axis=1)
    x = x_deq.args[0]
    _check_int8({"input": x, "weights": src, "output": r.result})
    n, k = matrix.shape
    xs = _shape(x)
    batches = int(np.prod(xs)) // k
    act = _activation(lo, hi, out_q)
    q = _channel_quant(rounding, x_q, s_w, out_q, act, per_tensor_fc=len(s_w) == 1)
    weights, kernel = _packed(matrix, "crtforge_int8_fully_connected", wide)
    arrays = [CArray(f"{symbol}_weights", _ctype(weights), weights, linked=True), *_quant_arrays(symbol, q)]
    if bias is not None:
        arrays.append(CArray(f"{symbol}_bias", "int32_t", bias))
    call = (f"{kernel}(&{symbol}_q, (const int8_t*)x0->data, {batches}, {k}, "
            f"{symbol}_weights, {f'{symbol}_bias' if bias is not None else 'NULL'}, {n}, scratch, "
            f"(int8_t*)y->data)")
    per = "per-channel" if len(s_w) > 1 else "per-tensor"
    return Int8Kernel(symbol, "FULLY_CONNECTED", f"{batches}x{k} by {n}x{k} int8 weights ({per}), "
                      f"{act.name}", 1, tuple(arrays), (_quant_struct(symbol, q),), call,
                      workspace_size(2 * k), kernel)  # the int16 column


def _check_transpose(permute) -> None:
    axes = [int(a) for a in permute.attrs.axes]
    if axes != [1, 0]:
        raise Int8Error(f"weight permutation {axes} is not a transpose")


def _channel_quant(rounding: qz.Rounding, x_q: Quant, s_w: np.ndarray, out_q: Quant, act: Activation,
                   per_tensor_fc: bool = False) -> qz.ChannelQuant:
    """The requantisation constants as the model's reference computes them."""
    if rounding == qz.Rounding.ONNXRUNTIME:
        # A ReLU whose limits are int8's own (zero point -128) is no clip at all.
        if qz.activation_range(act, out_q.scale, out_q.zero_point) != (qz.INT8_MIN, qz.INT8_MAX):
            raise Int8Error(f"a clip ({act.name}) in an ONNX model; onnxruntime's quantiser folds a ReLU into the "
                            f"output's range")
        return qz.onnxruntime_channel_quant(x_q.scale, x_q.zero_point, s_w, out_q.scale, out_q.zero_point)
    return qz.channel_quant(x_q.scale, x_q.zero_point, s_w, out_q.scale, out_q.zero_point, act,
                            per_tensor_fc=per_tensor_fc)


# On a DSP core (partition's `wide_weights`) a weighted op's int8 weights are widened to int16 when that copy fits
# in this many bytes: about a third fewer instructions per MAC on Cortex-M4 (no SXTB16), for at most 32 KiB more
# flash per op; big layers stay int8. Elsewhere widening saves nothing (compilers vectorise the int8 dots).
WIDE_WEIGHTS_MAX_BYTES = 64 * 1024


def _packed(matrix: np.ndarray, kernel: str, wide: bool) -> tuple[np.ndarray, str]:
    """[rows][k] int8 weights packed for `kernel`, or widened for its _wide twin when small (see above)."""
    if wide and 2 * matrix.size <= WIDE_WEIGHTS_MAX_BYTES:
        return qz.pack_weights_wide(matrix), f"{kernel}_wide"
    return qz.pack_weights(matrix), kernel


def _ctype(a: np.ndarray) -> str:
    return {np.dtype(np.int8): "int8_t", np.dtype(np.int16): "int16_t"}[a.dtype]


def _quant_arrays(symbol: str, q: qz.ChannelQuant) -> list[CArray]:
    if q.scales is not None:
        return [CArray(f"{symbol}_scale", "float", q.scales)]
    arrays = [CArray(f"{symbol}_multiplier", "int32_t", q.multipliers),
              CArray(f"{symbol}_shift", "int32_t", q.shifts)]
    fast = qz.fast_requant(q.multipliers, q.shifts)
    if fast is not None:
        arrays.append(CArray(f"{symbol}_fast", "int32_t", fast.reshape(-1)))
    return arrays


def _quant_struct(symbol: str, q: qz.ChannelQuant) -> str:
    head = (f"static const crtforge_int8_channel_quant {symbol}_q = {{\n"
            f"    .input_offset = {q.input_offset}, .output_offset = {q.output_offset},\n"
            f"    .act_min = {q.act_min}, .act_max = {q.act_max}, .per_channel = {int(q.per_channel)},\n")
    if q.scales is not None:  # onnxruntime's float requantisation
        return head + f"    .multiplier = NULL, .shift = NULL, .fast = NULL, .scale = {symbol}_scale}};"
    fast = f"{symbol}_fast" if qz.fast_requant(q.multipliers, q.shifts) is not None else "NULL"
    return head + (f"    .multiplier = {symbol}_multiplier, .shift = {symbol}_shift, .fast = {fast}, "
                   f".scale = NULL}};")


def _params_struct(ctype: str, name: str, params: Any) -> str:
    """The C definition of a kernel's parameter struct from a dataclass or a dict (its names are the C fields)."""
    items = params.items() if isinstance(params, dict) else vars(params).items()
    return f"static const {ctype} {name} = {{{', '.join(f'.{k} = {v}' for k, v in items)}}};"


def _shape_struct(symbol: str, s: dict[str, int]) -> str:
    return _params_struct("crtforge_int8_conv_shape", f"{symbol}_shape", s)


def _geometry(x_shape, y_shape, kernel_hw, strides, dilation, padding) -> dict[str, int]:
    n, h, w, c = x_shape
    _, oh, ow, oc = y_shape
    return {"batches": n, "in_h": h, "in_w": w, "in_c": c, "out_h": oh, "out_w": ow, "out_c": oc,
            "kernel_h": kernel_hw[0], "kernel_w": kernel_hw[1], "stride_h": strides[0], "stride_w": strides[1],
            "dilation_h": dilation[0], "dilation_w": dilation[1], "pad_top": padding[0], "pad_left": padding[1]}


def _conv2d(symbol: str, r: _Reader, wide: bool, rounding: qz.Rounding) -> Int8Kernel:
    quant_call, out_q, lo, hi = _requant_tail(r)
    conv, bias = _weighted_tail(r, quant_call)
    a = conv.attrs
    layout = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    nchw = layout == ("NCHW", "OIHW", "NCHW")  # ONNX's
    if layout[0] != layout[2] or not (nchw or layout[0] == "NHWC"):
        raise Int8Error(f"conv2d layout {'/'.join(layout)}; the kernels take NHWC, or NCHW/OIHW transposed")
    x_deq, w_expr = r.arg(conv, 0), r.arg(conv, 1)
    x_q = _dequant_params(r, x_deq)
    reshaped = r.op(w_expr) == "relax.reshape"  # TFLite's depthwise filter, [1][KH][KW][C*M] to HWOI
    w_deq = r.arg(w_expr, 0) if reshaped else w_expr
    w = _const(r.arg(w_deq, 0))
    x, y = x_deq.args[0], r.result
    _check_int8({"input": x, "weights": r.arg(w_deq, 0), "output": y})
    xs, ys = _shape(x), _shape(y)
    if nchw:
        xs, ys = (xs[0], xs[2], xs[3], xs[1]), (ys[0], ys[2], ys[3], ys[1])
    s_w = _weight_scales(r, w_deq, channel_axis=0 if nchw else None)
    geo = _geometry(xs, ys, (0, 0), [int(v) for v in a.strides], [int(v) for v in a.dilation],
                    [int(v) for v in a.padding])
    groups, in_c, out_c = int(a.groups), xs[3], ys[3]
    act = _activation(lo, hi, out_q)
    depthwise = reshaped or (nchw and groups == in_c and groups > 1)
    if depthwise:
        if nchw:  # OIHW [C*M][1][KH][KW]
            filt = np.transpose(w[:, 0], (1, 2, 0))
        elif str(a.kernel_layout) != "HWOI" or groups != in_c or w.shape[-1] != out_c:
            raise Int8Error(f"depthwise conv2d with groups {groups}, kernel layout {a.kernel_layout}")
        else:
            filt = w.reshape(w.shape[-3], w.shape[-2], out_c)
        if filt.shape[2] != out_c or out_c % in_c:
            raise Int8Error(f"depthwise conv2d of {in_c} to {out_c} channels")
        geo["kernel_h"], geo["kernel_w"] = filt.shape[0], filt.shape[1]
        geo["depth_multiplier"] = out_c // in_c
        weights, kernel = qz.pack_depthwise(filt, out_c // in_c), "crtforge_int8_depthwise_conv2d"
        scratch = workspace_size(4 * out_c)  # one pixel's int32 sums
        op = "DEPTHWISE_CONV_2D"
    else:
        if groups != 1 or not (nchw or str(a.kernel_layout) == "HWIO"):
            raise Int8Error(f"conv2d with groups {groups}, kernel layout {a.kernel_layout}")
        # TFLite's OHWI: from ONNX's OIHW, or from the HWIO TVM's TFLite frontend makes of it.
        ohwi = np.transpose(w, (0, 2, 3, 1) if nchw else (3, 0, 1, 2))
        geo["kernel_h"], geo["kernel_w"] = ohwi.shape[1], ohwi.shape[2]
        geo["depth_multiplier"] = 1
        weights, kernel = _packed(qz.conv_matrix(ohwi), "crtforge_int8_conv2d", wide)
        scratch, op = workspace_size(2 * qz.conv_column(ohwi[0].size)), "CONV_2D"  # the int16 column
    if len(s_w) not in (1, out_c):
        raise Int8Error(f"{len(s_w)} weight scales for {out_c} output channels")
    s_w = np.resize(s_w, out_c)
    q = _channel_quant(rounding, x_q, s_w, out_q, act)
    arrays = [CArray(f"{symbol}_weights", _ctype(weights), weights.reshape(-1), linked=True),
              *_quant_arrays(symbol, q)]
    if bias is not None:
        arrays.append(CArray(f"{symbol}_bias", "int32_t", bias))
    b = f"{symbol}_bias" if bias is not None else "NULL"
    x_arg, y_arg, before, after = "(const int8_t*)x0->data", "(int8_t*)y->data", (), ()
    if nchw:  # the kernel's NHWC tensors in scratch after its own
        n, h, w_, c = xs
        oh, ow, oc = ys[1], ys[2], ys[3]
        x_bytes = workspace_size(int(np.prod(xs)))
        before = (f"int8_t* const x_nhwc = (int8_t*)scratch + {scratch};",
                  f"int8_t* const y_nhwc = x_nhwc + {x_bytes};",
                  f"crtforge_int8_transpose((const int8_t*)x0->data, {n}, {c}, {h * w_}, x_nhwc);")
        after = (f"crtforge_int8_transpose(y_nhwc, {n}, {oh * ow}, {oc}, (int8_t*)y->data);",)
        x_arg, y_arg = "x_nhwc", "y_nhwc"
        scratch += x_bytes + workspace_size(int(np.prod(ys)))
    call = f"{kernel}(&{symbol}_shape, &{symbol}_q, {x_arg}, {symbol}_weights, {b}, scratch, {y_arg})"
    shown = (_shape(x), _shape(y))
    summary = (f"{'x'.join(map(str, shown[0]))} -> {'x'.join(map(str, shown[1]))}"
               f"{' (NCHW)' if nchw else ''}, kernel {geo['kernel_h']}x{geo['kernel_w']}, "
               f"stride {geo['stride_h']}x{geo['stride_w']}, {act.name}")
    return Int8Kernel(symbol, op, summary, 1, tuple(arrays), (_quant_struct(symbol, q), _shape_struct(symbol, geo)),
                      call, scratch, kernel, before, after)


_FLOAT_ACTIVATIONS = {(0.0, 6.0): Activation.RELU6, (-1.0, 1.0): Activation.RELU_N1_TO_1}


def _binary(symbol: str, r: _Reader, name: str) -> Int8Kernel:
    quant_call, out_q, lo, hi = _requant_tail(r)
    body = r.arg(quant_call, 0)
    float_act = Activation.NONE
    if r.op(body) == "relax.nn.relu":
        float_act, body = Activation.RELU, r.arg(body, 0)
    elif r.op(body) == "relax.clip":
        bounds = (_prim(body.args[1]), _prim(body.args[2]))
        if bounds not in _FLOAT_ACTIVATIONS:
            raise Int8Error(f"clip{bounds} is not a TFLite fused activation")
        float_act, body = _FLOAT_ACTIVATIONS[bounds], r.arg(body, 0)
    a_q, b_q = _dequant_params(r, r.arg(body, 0)), _dequant_params(r, r.arg(body, 1))
    x0, x1, y = r.arg(body, 0).args[0], r.arg(body, 1).args[0], r.result
    _check_int8({"first input": x0, "second input": x1, "output": y})
    if _shape(x0) != _shape(x1) or _shape(x0) != _shape(y):
        raise Int8Error(f"{name} of shapes {_shape(x0)} and {_shape(x1)}: the kernels do not broadcast")
    act = _activation(lo, hi, out_q)
    if float_act != Activation.NONE:
        if act != Activation.NONE:
            raise Int8Error("two fused activations")
        act = float_act
    size = int(np.prod(_shape(y)))
    if name == "add":
        p = qz.add_params(a_q.scale, a_q.zero_point, b_q.scale, b_q.zero_point, out_q.scale, out_q.zero_point, act)
        struct_type, op = "crtforge_int8_add_params", "ADD"
    else:
        p = qz.mul_params(a_q.scale, a_q.zero_point, b_q.scale, b_q.zero_point, out_q.scale, out_q.zero_point, act)
        struct_type, op = "crtforge_int8_mul_params", "MUL"
    static = _params_struct(struct_type, f"{symbol}_p", p)
    call = (f"crtforge_int8_{name}(&{symbol}_p, (const int8_t*)x0->data, (const int8_t*)x1->data, {size}, "
            f"(int8_t*)y->data)")
    return Int8Kernel(symbol, op, f"{size} elements, {act.name}", 2, (), (static,), call, 0, f"crtforge_int8_{name}")


def _pool(symbol: str, r: _Reader, name: str) -> Int8Kernel:
    res = r.result
    lo, hi = -128, 127
    if r.op(res) == "relax.clip":
        lo, hi = int(_prim(res.args[1])), int(_prim(res.args[2]))
        res = r.arg(res, 0)
    pool = r.arg(res, 0) if name == "avg_pool2d" else res
    a = pool.attrs
    x = r.arg(pool, 0).args[0] if name == "avg_pool2d" else pool.args[0]
    y = r.result
    _check_int8({"input": x, "output": y})
    if str(a.layout) != "NHWC" or bool(a.ceil_mode) or (name == "avg_pool2d" and bool(a.count_include_pad)):
        raise Int8Error(f"{name} with layout {a.layout}, ceil_mode {a.ceil_mode}")
    geo = _geometry(_shape(x), _shape(y), [int(v) for v in a.pool_size], [int(v) for v in a.strides],
                    [int(v) for v in a.dilation], [int(v) for v in a.padding])
    if geo["dilation_h"] != 1 or geo["dilation_w"] != 1:
        raise Int8Error(f"{name} with dilation: TFLite's pools have none")
    geo["depth_multiplier"] = 1
    call = f"crtforge_int8_{name}(&{symbol}_shape, {lo}, {hi}, (const int8_t*)x0->data, (int8_t*)y->data)"
    op = "AVERAGE_POOL_2D" if name == "avg_pool2d" else "MAX_POOL_2D"
    summary = (f"{'x'.join(map(str, _shape(x)))} -> {'x'.join(map(str, _shape(y)))}, window "
               f"{geo['kernel_h']}x{geo['kernel_w']}, stride {geo['stride_h']}x{geo['stride_w']}")
    return Int8Kernel(symbol, op, summary, 1, (), (_shape_struct(symbol, geo),), call, 0, f"crtforge_int8_{name}")


@dataclass(frozen=True)
class _Unary:
    """quantize(op(dequantize(x))): the float op, the input's quantisation and shape, the output's quantisation."""
    op: Any
    x_q: Quant
    out_q: Quant
    shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _unary(r: _Reader) -> _Unary:
    quant_call, out_q, _, _ = _requant_tail(r)
    op = r.arg(quant_call, 0)
    x_deq = r.arg(op, 0)
    x, y = x_deq.args[0], r.result
    _check_int8({"input": x, "output": y})
    return _Unary(op, _dequant_params(r, x_deq), out_q, _shape(x), _shape(y))


def _softmax(symbol: str, r: _Reader) -> Int8Kernel:
    u = _unary(r)
    soft, out_q, shape = u.op, u.out_q, u.shape
    if int(soft.attrs.axis) not in (-1, len(shape) - 1):
        raise Int8Error(f"softmax over axis {soft.attrs.axis}; TFLite's is the last")
    try:
        sm.check_output_quantization(out_q.scale, out_q.zero_point)
    except ValueError as e:
        raise Int8Error(str(e)) from None
    depth, rows = shape[-1], int(np.prod(shape[:-1]))
    if depth > sm.MAX_DEPTH:
        raise Int8Error(f"softmax depth {depth} is above the kernel's {sm.MAX_DEPTH}")
    p = sm.softmax_params(u.x_q.scale, 1.0)
    static = _params_struct("crtforge_int8_softmax_params", f"{symbol}_p", p)
    call = f"crtforge_int8_softmax(&{symbol}_p, (const int8_t*)x0->data, {rows}, {depth}, (int8_t*)y->data)"
    return Int8Kernel(symbol, "SOFTMAX", f"{rows} rows of {depth}", 1, (), (static,), call, 0, "crtforge_int8_softmax")


def _mean(symbol: str, r: _Reader) -> Int8Kernel:
    u = _unary(r)
    mean, x_q, out_q, shape = u.op, u.x_q, u.out_q, u.shape
    axes = list(range(len(shape))) if mean.attrs.axis is None else [int(a) for a in mean.attrs.axis]
    try:
        outer, reduced, inner = mn.reduction_layout(shape, axes)
        p = mn.mean_params(x_q.scale, x_q.zero_point, out_q.scale, out_q.zero_point, reduced)
    except ValueError as e:
        raise Int8Error(str(e)) from None
    static = _params_struct("crtforge_int8_mean_params", f"{symbol}_p", p)
    call = (f"crtforge_int8_mean(&{symbol}_p, (const int8_t*)x0->data, {outer}, {reduced}, {inner}, "
            f"(int8_t*)y->data)")
    summary = f"{'x'.join(map(str, shape))} over axes {axes} -> {'x'.join(map(str, u.out_shape))}"
    return Int8Kernel(symbol, "MEAN", summary, 1, (), (static,), call, 0, "crtforge_int8_mean")


def _quantize(symbol: str, r: _Reader) -> Int8Kernel:
    """A float tensor quantised as onnxruntime's QuantizeLinear does: x / scale in float32, rounded half to even,
    plus the zero point, saturated. (Only for the model's inputs: see partition.)"""
    res = r.result
    x = res.args[0]
    q = _dequant_params(r, res)
    if _dtype(x) != "float32" or _dtype(res) != "int8":
        raise Int8Error(f"quantize from {_dtype(x)} to {_dtype(res)}; the kernel takes float32 to int8")
    size = int(np.prod(_shape(x)))
    scale = CArray(f"{symbol}_scale", "float", np.array([q.scale], np.float32))
    call = (f"crtforge_int8_quantize((const float*)x0->data, {size}, {symbol}_scale[0], {q.zero_point}, "
            f"(int8_t*)y->data)")
    return Int8Kernel(symbol, "QUANTIZE", f"{size} values, scale {q.scale:g}, zero point {q.zero_point}", 1,
                      (scale,), (), call, 0, "crtforge_int8_quantize")


def _composite(func) -> tuple[str, Any]:
    """The pattern name and the inner composite function of an outer function RunCodegen receives."""
    from tvm import relax

    found = []

    def visit(e):
        if isinstance(e, relax.Function) and e.attrs is not None and "Composite" in e.attrs:
            found.append(e)

    relax.analysis.post_order_visit(func.body, visit)
    inner = found[0] if found else func
    name = str(inner.attrs["Composite"]) if inner.attrs is not None and "Composite" in inner.attrs else ""
    return name.split(".", 1)[-1], inner


def describe(func, symbol: str, wide_weights: bool = False, rounding: qz.Rounding = qz.Rounding.TFLITE) -> Int8Kernel:
    """The C of one matched function (outer, as RunCodegen passes it, or the composite itself)."""
    name, inner = _composite(func)
    return _describe(name, _Reader.of_function(inner), symbol, wide_weights, rounding)


# What onnxruntime computes with the kernels' arithmetic: its weighted ops requantise in float (Rounding);
# its other quantised ops do not follow TFLite's formulas, so they stay on TVM's float path.
_ONNXRUNTIME_OPS = ("fully_connected", "conv2d", "quantize")


def _describe(name: str, r: _Reader, symbol: str, wide_weights: bool = False,
              rounding: qz.Rounding = qz.Rounding.TFLITE) -> Int8Kernel:
    try:
        if rounding == qz.Rounding.ONNXRUNTIME and name not in _ONNXRUNTIME_OPS:
            raise Int8Error(f"no integer kernel reproduces onnxruntime's {name}")
        if name == "fully_connected":
            return _fully_connected(symbol, r, wide_weights, rounding)
        if name == "conv2d":
            return _conv2d(symbol, r, wide_weights, rounding)
        if name in ("add", "mul"):
            return _binary(symbol, r, name)
        if name in ("avg_pool2d", "max_pool2d"):
            return _pool(symbol, r, name)
        if name == "softmax":
            return _softmax(symbol, r)
        if name == "mean":
            return _mean(symbol, r)
        if name == "quantize":
            if rounding != qz.Rounding.ONNXRUNTIME:
                raise Int8Error("TFLite's QUANTIZE rounds ties away from zero; the kernel rounds as onnxruntime")
            return _quantize(symbol, r)
    except Int8Error as e:
        raise Int8Error(f"{symbol} ({name}): {e}") from None
    raise Int8Error(f"{symbol}: unknown pattern '{name}'")


def _supported(name: str, rounding: qz.Rounding, inputs: tuple[Any, ...], context) -> bool:
    """Match only what the kernels compute exactly (describing the cluster succeeds); anything else, such as
    int16 activations or asymmetric weights, stays on TVM's float path and is reported as float. A quantize is
    matched only on one of the model's `inputs`: elsewhere TVM fuses it into the float op before it, and taking
    it out would store that op's float output in the arena."""
    if name == "quantize" and not any(context.matched_expr.args[0].same_as(v) for v in inputs):
        return False
    r = _Reader(context.matched_expr, dict(context.matched_bindings.items()))
    try:
        _describe(name, r, "check", rounding=rounding)
    except Int8Error:
        return False
    return True


# --- the codegen ---------------------------------------------------------------------------------------------

def emit_c(k: Int8Kernel) -> str:
    from tasks.emit.codegen import _env

    return _env().get_template("int8_op.c.j2").render(k=k, lines=_lines)


def _lines(values: np.ndarray) -> list[str]:
    from tasks.emit.codegen import weight_lines
    return weight_lines(np.asarray(values).reshape(-1)) or ["0,"]


def _codegen(described: dict[str, Int8Kernel], funcs, options, constant_names) -> list:
    """relax.ext.crtforge_int8: the C of the functions partition described (by their global symbol)."""
    import tvm

    create = tvm.get_global_func("runtime.CSourceModuleCreate")
    out = []
    for f in funcs:
        symbol = str(f.attrs["global_symbol"])
        k = described[symbol]
        out.append(create(emit_c(k), "c", [symbol], [a.name for a in k.arrays if a.linked]))
    return out


def op_summary(kernels: list[Int8Kernel], plan, external: frozenset[str], float_kernels: set[str]) -> "OpCounts":
    """How the plan's calls compute: the int8 ops by TFLite name, other external functions, and TVM's kernels
    by whether they compute in float (`float_kernels`: a fused dequantize-op-quantize has int8 arguments only)."""
    from tasks.compile.plan import OpCounts

    by_symbol = {k.symbol: k.op for k in kernels}
    counts = OpCounts()
    for call in plan.calls:
        if call.kernel in by_symbol:
            op = by_symbol[call.kernel]
            counts.integer[op] = counts.integer.get(op, 0) + 1
        elif call.kernel in external:
            counts.other.append(call.kernel)
        elif call.kernel in float_kernels or any(plan.tensors[t].dtype.startswith("float") for t in call.args):
            counts.tvm_float.append(call.kernel)
        else:
            counts.tvm_integer.append(call.kernel)
    return counts


def _called(main) -> list[Any]:
    """The GlobalVars `main` calls, in order."""
    from tvm import ir, relax

    out = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, ir.GlobalVar):
            out.append(e.op)

    relax.analysis.post_order_visit(main.body, visit)
    return out


@dataclass
class Partitioned:
    mod: Any
    kernels: list[Int8Kernel] = field(default_factory=list)
    functions: dict[str, Any] = field(default_factory=dict)  # each symbol's Relax function, for its source ops

    @property
    def workspace(self) -> dict[str, int]:
        return {k.symbol: k.workspace_bytes for k in self.kernels if k.workspace_bytes}

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """The constants the modules name (their weights), by name: the build records them with the params."""
        return {a.name: a.values.reshape(-1) for k in self.kernels for a in k.arrays if a.linked}


def fold_identity_requantize(mod) -> tuple[Any, dict[str, str]]:
    """quantize(L(dequantize(x, s, z)), s, z) is L(x) for a layout op L (permute_dims, reshape): the values pass
    through unchanged, so the int8 tensor is moved instead of round-tripping through float. A QDQ graph has one
    wherever a layout op sits between quantised ops (an ONNX Transpose or Flatten before a Gemm), and TVM would
    compile each into a float kernel. Also returns, by binding name, each folded quantize's layout op (whose
    source op the binding now computes)."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    mod = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)  # the caller's module stays as it was
    x, s_in, z_in, s_out, z_out = wildcard(), is_const(), is_const(), is_const(), is_const()
    deq = is_op("relax.dequantize")(x, s_in, z_in)
    layout = is_op("relax.permute_dims")(deq) | is_op("relax.reshape")(deq, wildcard())
    pattern = is_op("relax.quantize")(layout, s_out, z_out)
    moved: dict[str, str] = {}

    def same(a, b) -> bool:
        return _const(a).size == 1 and np.array_equal(_const(a), _const(b))

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        bound = {b.value: b.var.name for block in func.body.blocks for b in block.bindings}

        def rewrite(call, matched):
            if not (same(matched[s_in], matched[s_out]) and same(matched[z_in], matched[z_out])
                    and _dtype(matched[x]) == _dtype(call)):
                return call
            lay = matched[layout]
            if call in bound and lay in bound:
                moved[bound[call]] = bound[lay]
            return relax.Call(lay.op, [matched[x], *lay.args[1:]], lay.attrs)

        mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod, moved


def partition(mod, prefix: str, wide_weights: bool = False, rounding: qz.Rounding = qz.Rounding.TFLITE) -> Partitioned:
    """Offload every int8 op cluster the kernels implement; the rest of `mod` is left as it was. `wide_weights`:
    the target is a DSP core, where small layers get int16 weights (WIDE_WEIGHTS_MAX_BYTES); `rounding`: whose
    requantisation to reproduce (the model format's reference)."""
    import tvm_ffi
    from tvm import relax

    described: dict[str, Int8Kernel] = {}
    tvm_ffi.register_global_func(f"relax.ext.{CODEGEN}", functools.partial(_codegen, described), override=True)
    inputs = tuple(mod["main"].params)
    patterns = [(f"{CODEGEN}.{name}", pat, {}, functools.partial(_supported, name, rounding, inputs))
                for name, pat in _patterns()]
    mod = relax.transform.FuseOpsByPattern(patterns, bind_constants=True, annotate_codegen=True)(mod)
    kernels = []
    functions = {}
    matched = [(gv, f) for gv, f in mod.functions.items() if f.attrs is not None and f.attrs.get("Codegen") == CODEGEN]
    # In the order main calls them, so that the C functions are numbered as the model's ops run.
    order = {gv.name_hint: i for i, gv in enumerate(_called(mod["main"]))}
    matched.sort(key=lambda item: order.get(item[0].name_hint, len(order)))
    for index, (gv, func) in enumerate(matched):
        symbol = ModelSymbols(prefix).int8_op(_composite(func)[0], index)
        mod[gv] = func.with_attr("global_symbol", symbol)
        functions[symbol] = func
        kernels.append(describe(func, symbol, wide_weights, rounding))
        described[symbol] = kernels[-1]
    if not kernels:
        return Partitioned(mod)
    return Partitioned(relax.transform.RunCodegen()(mod), kernels, functions)

