"""crtforge's own Relax external codegen, 'crtforge_dense': float32 matmul(x, W) + b and conv2d(x, W) + b
(+ ReLU), with W and b constants, offloaded to C kernels in crt/ (crtforge_dense_f32, crtforge_conv2d_f32),
which take W packed in blocks of output columns (`pack_dense`, crt/include/crtforge/dense.h).

It is a real producer of external modules: FuseOpsByPattern marks the pattern, RunCodegen calls
`relax.ext.crtforge_dense`, which returns one C source module per offloaded function. With
`bind_constants=True` each module names the constants it needs (`get_const_vars`); TVM's VM would load
them at start-up, crtforge's codegen resolves them into const arrays instead.
"""

from __future__ import annotations

from typing import Any

import functools
from dataclasses import dataclass, field

import numpy as np

from tasks.compile.plan import workspace_size
from tasks.config import OFFLOAD_CHOICES, OFFLOAD_CODEGENS
from tasks.errors import CrtforgeError

_CODEGEN = "crtforge_dense"


class OffloadError(CrtforgeError):
    """An offloaded function the codegen cannot express."""


def _pattern():
    """The pattern, and its parts by name (PatternCheckContext.annotated_expr gives what each matched)."""
    from tvm.relax.dpl import is_const, is_op, wildcard

    x, weight, bias = wildcard(), is_const(), is_const()
    matmul = is_op("relax.matmul")(x, weight)
    add = is_op("relax.add")(matmul, bias)
    return add, {"x": x, "weight": weight, "bias": bias, "matmul": matmul, "add": add}


def _conv_pattern(relu: bool):
    from tvm.relax.dpl import is_const, is_op, wildcard

    x, weight, bias = wildcard(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(x, weight)
    add = is_op("relax.add")(conv, bias)
    out = is_op("relax.nn.relu")(add) if relu else add
    return out, {"x": x, "weight": weight, "bias": bias, "conv": conv, "add": add, "out": out}


# The layouts crtforge_conv2d_f32 takes: (data, kernel, out) -> nchw flag.
_CONV_LAYOUTS = {("NCHW", "OIHW", "NCHW"): 1, ("NHWC", "HWIO", "NHWC"): 0}


def _conv_supported(context) -> bool:
    """float32 conv2d, ONNX's or TFLite's layout, groups 1 or depthwise (NHWC, one filter per channel), plus a
    constant bias of one value per channel."""
    parts = context.annotated_expr
    conv, bias, out = parts["conv"], parts["bias"], parts["out"]
    a = conv.attrs
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    if layouts not in _CONV_LAYOUTS or (int(a.groups) != 1 and not _depthwise(conv)):
        return False
    if any(str(e.ty.dtype) != "float32" for e in (parts["x"], parts["weight"], bias, out)):
        return False
    os_, bs = _shape(out), _shape(bias)
    if os_ is None or bs is None or len(os_) != 4:
        return False
    channels = os_[1] if str(a.out_layout) == "NCHW" else os_[3]
    return int(np.prod(bs)) == channels and max(bs) == channels


def _depthwise(conv) -> bool:
    """A depthwise conv2d crtforge_depthwise_f32 takes: NHWC, HWIO weights [kh][kw][1][channels], groups = channels."""
    a, ws = conv.attrs, _shape(conv.args[1])
    return (str(a.data_layout), str(a.kernel_layout)) == ("NHWC", "HWIO") and ws is not None and len(ws) == 4 \
        and ws[2] == 1 and int(a.groups) == ws[3] > 1


def _shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    try:
        return tuple(int(v) for v in ty.shape.values)
    except (AttributeError, TypeError):
        return None


def _supported(context) -> bool:
    """float32 x[M, K] by a constant W[K, N], plus a constant bias of N values: what crtforge_dense_f32 does."""
    parts = context.annotated_expr
    x, w, bias, call = parts["x"], parts["weight"], parts["bias"], parts["add"]
    xs, ws, bs, out = _shape(x), _shape(w), _shape(bias), _shape(call)
    if None in (xs, ws, bs, out) or len(ws) != 2 or len(xs) < 1 or xs[-1] != ws[0]:
        return False
    if any(str(e.ty.dtype) != "float32" for e in (x, w, bias, call)):
        return False
    return int(np.prod(bs)) == ws[1] and bs[-1] == ws[1] and out[-1] == ws[1]


BLOCK = 8  # CRTFORGE_DENSE_BLOCK


def pack_dense(w: np.ndarray) -> np.ndarray:
    """W [k][n] as crtforge_dense_f32 reads it: per block of BLOCK output columns (the last n % BLOCK wide),
    the block's [k][width] values, flat."""
    k, n = w.shape
    return np.concatenate([np.ascontiguousarray(w[:, j:j + BLOCK]).reshape(-1) for j in range(0, n, BLOCK)]
                          ).astype(np.float32)


def _emit_dense(found: "Offloaded", func, calls: dict[str, Any], constant_names) -> Any:
    """One offloaded matmul + bias as a C source module naming its packed weights and its bias."""
    import tvm
    from tvm import ir

    from tasks.emit.codegen import _env

    symbol = str(func.attrs["global_symbol"])
    w, b = calls["relax.matmul"].args[1], calls["relax.add"].args[1]
    if not (isinstance(w, ir.GenericConst) and isinstance(b, ir.GenericConst)
            and w in constant_names and b in constant_names):
        raise OffloadError(f"{symbol}: expected matmul by a constant weight plus a constant bias")
    weight, bias = f"{symbol}_packed_weights", str(constant_names[b])
    found.constants[weight] = pack_dense(w.value.numpy())
    k, n = (int(d) for d in w.value.shape)
    xshape = _shape(func.params[0])
    m = int(np.prod(xshape)) // k
    source = _env().get_template("offload_dense.c.j2").render(symbol=symbol, weight=weight, bias=bias, m=m, k=k, n=n)
    return tvm.get_global_func("runtime.CSourceModuleCreate")(source, "c", [symbol], [weight, bias])


def _calls(func) -> dict[str, Any]:
    """The calls in an offloaded function, by op name."""
    from tvm import ir, relax

    calls: dict[str, Any] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op):
            calls[expr.op.name] = expr

    relax.analysis.post_order_visit(func.body, visit)
    return calls


def _emit_conv(found: "Offloaded", func, calls: dict[str, Any], constant_names) -> Any:
    """One offloaded conv2d + bias (+ ReLU) as a C source module naming its packed weights and its bias."""
    import tvm
    from tvm import ir

    from tasks.emit.codegen import _env

    symbol = str(func.attrs["global_symbol"])
    conv, add = calls["relax.nn.conv2d"], calls["relax.add"]
    w, b = conv.args[1], add.args[1]
    if not (isinstance(w, ir.GenericConst) and isinstance(b, ir.GenericConst) and b in constant_names):
        raise OffloadError(f"{symbol}: expected conv2d by a constant weight plus a constant bias")
    a = conv.attrs
    nchw = _CONV_LAYOUTS[(str(a.data_layout), str(a.kernel_layout), str(a.out_layout))]
    depthwise = _depthwise(conv)
    weights = w.value.numpy()
    # W as [k][out_c], k in the column's order (ky, kx, c); depthwise as [ky][kx][c], one filter per channel.
    matrix = np.transpose(weights, (2, 3, 1, 0)) if nchw else weights
    out_c = matrix.shape[-1]
    weight = f"{symbol}_packed_weights"
    flat = matrix.reshape(-1, out_c)
    found.constants[weight] = np.ascontiguousarray(flat).reshape(-1) if depthwise else pack_dense(flat)
    xs, ys = _shape(func.params[0]), _shape(conv)
    if nchw:
        xs, ys = (xs[0], xs[2], xs[3], xs[1]), (ys[0], ys[2], ys[3], ys[1])
    kh, kw = (matrix.shape[0], matrix.shape[1])
    pad = [int(v) for v in a.padding]
    shape = {"batches": xs[0], "in_h": xs[1], "in_w": xs[2], "in_c": xs[3], "out_h": ys[1], "out_w": ys[2],
             "out_c": ys[3], "kernel_h": kh, "kernel_w": kw, "stride_h": int(a.strides[0]),
             "stride_w": int(a.strides[1]), "dilation_h": int(a.dilation[0]), "dilation_w": int(a.dilation[1]),
             "pad_top": pad[0], "pad_left": pad[1], "nchw": nchw, "relu": int("relax.nn.relu" in calls)}
    if not depthwise:  # the depthwise kernel needs no scratch
        scratch = 4 * ys[2] * (kh * kw * xs[3] + ys[3])  # CRTFORGE_CONV2D_F32_SCRATCH: a row of pixels
        found.workspace[symbol] = workspace_size(scratch)
    k = kh * kw * (1 if depthwise else xs[3])
    source = _env().get_template("offload_conv2d.c.j2").render(
        symbol=symbol, weight=weight, bias=str(constant_names[b]), k=k, shape=shape, depthwise=depthwise,
        workspace=found.workspace.get(symbol, 0), layout="NCHW" if nchw else "NHWC")
    return tvm.get_global_func("runtime.CSourceModuleCreate")(source, "c", [symbol], [weight, str(constant_names[b])])


def _codegen(found: "Offloaded", funcs, options, constant_names) -> list:
    out = []
    for f in funcs:
        calls = _calls(f)
        emit = _emit_conv if "relax.nn.conv2d" in calls else _emit_dense
        out.append(emit(found, f, calls, constant_names))
    return out


@dataclass
class Offloaded:
    mod: Any
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # the packed weights, by the name C uses
    workspace: dict[str, int] = field(default_factory=dict)        # bytes of scratch, by offloaded function
    functions: dict[str, Any] = field(default_factory=dict)  # each offloaded function, for its source ops


def offloaded_ops(codegens: tuple[str, ...]) -> set[str]:
    """The op families a target's `offload` entries choose: a codegen's name takes all of its families."""
    unknown = [c for c in codegens if c not in OFFLOAD_CHOICES]
    if unknown:
        raise OffloadError(f"unknown external codegen(s) {', '.join(unknown)}; known: {', '.join(OFFLOAD_CHOICES)}")
    return {op for c in codegens for op in (OFFLOAD_CODEGENS[c] if c in OFFLOAD_CODEGENS else (c.split(".")[1],))}


def partition(mod, prefix: str, codegens: tuple[str, ...]) -> Offloaded:
    """Offload what `codegens` match in `mod`: the module (with `external_mods` and `const_name_to_constant`
    attributes when anything was offloaded), and the scratch each offloaded function needs."""
    import tvm
    import tvm_ffi
    from tvm import relax

    ops = offloaded_ops(codegens)
    if not ops:
        return Offloaded(mod)
    # TVM finds external codegens by global name; each partition registers its own, which collects the packed
    # weights and the scratch of what it emits.
    found = Offloaded(None)
    tvm_ffi.register_global_func(f"relax.ext.{_CODEGEN}", functools.partial(_codegen, found), override=True)
    patterns = []
    if "conv2d" in ops:
        # NHWC convolutions: a pixel's input channels and output channels are then contiguous, so NCHW models
        # (ONNX) gather and scatter no strided columns; between two convolutions the layout stays NHWC. Left to
        # TVM, convolutions keep the model's layout, which tuning records were searched on.
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        patterns += [(f"{_CODEGEN}.conv2d_bias_relu", *_conv_pattern(True), _conv_supported),
                     (f"{_CODEGEN}.conv2d_bias", *_conv_pattern(False), _conv_supported)]
    # Transposed weights (ONNX Gemm's transB, the HWIO kernels) become constants, which the patterns require.
    mod = relax.transform.FoldConstant()(mod)
    if "dense" in ops:
        pattern, annotations = _pattern()
        patterns.append((f"{_CODEGEN}.dense_bias", pattern, annotations, _supported))
    mod = relax.transform.FuseOpsByPattern(patterns, bind_constants=True, annotate_codegen=True)(mod)
    functions = {}
    for gv, func in list(mod.functions.items()):
        if func.attrs is not None and "Codegen" in func.attrs:
            # Prefixed per model, like the kernels, so two models can share a binary.
            functions[f"{prefix}_{gv.name_hint}"] = func
            mod[gv] = func.with_attr("global_symbol", f"{prefix}_{gv.name_hint}")
    mod = relax.transform.RunCodegen()(mod)
    if found.constants:
        # The packed weights join the constants the modules name; the unpacked ones stay behind, named by none.
        constants = dict(mod.attrs["const_name_to_constant"].items())
        constants.update({name: tvm.runtime.tensor(a) for name, a in found.constants.items()})
        mod = mod.with_attr("const_name_to_constant", constants)
    return Offloaded(mod, found.constants, found.workspace, functions)


def external_modules(mod) -> tuple[list, dict[str, np.ndarray]]:
    """The runtime modules RunCodegen produced, and every constant they need, by name."""
    attrs = mod.attrs if mod.attrs is not None else {}
    modules = list(attrs["external_mods"]) if "external_mods" in attrs else []
    constants = ({str(k): v.numpy() for k, v in attrs["const_name_to_constant"].items()}
                 if "const_name_to_constant" in attrs else {})
    return modules, constants
