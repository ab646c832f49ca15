"""crtforge's own Relax external codegen, 'crtforge_dense': matmul(x, W) + b, with W and b constants,
offloaded to a C kernel in crt/ (crtforge_dense_f32), which takes W packed in blocks of output columns
(`pack_dense`, crt/include/crtforge/dense.h).

It is a real producer of external modules: FuseOpsByPattern marks the pattern, RunCodegen calls
`relax.ext.crtforge_dense`, which returns one C source module per offloaded function. With
`bind_constants=True` each module names the constants it needs (`get_const_vars`); TVM's VM would load
them at start-up, crtforge's codegen resolves them into const arrays instead.
"""

from __future__ import annotations

from typing import Any

import functools

import numpy as np

from tasks.config import OFFLOAD_CODEGENS
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


def _emit(packed: dict[str, np.ndarray], func, constant_names) -> Any:
    """One offloaded function as a C source module that names the two constants it needs: the bias, and the
    weights packed (added to `packed` under their new name)."""
    import tvm
    from tvm import ir, relax

    from tasks.emit.codegen import _env

    symbol = str(func.attrs["global_symbol"])
    operands: dict[str, Any] = {}  # "relax.matmul" → W, "relax.add" → bias: each call's constant operand

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op) and expr.op.name in ("relax.matmul",
                                                                                             "relax.add"):
            operands[expr.op.name] = expr.args[1]

    relax.analysis.post_order_visit(func.body, visit)
    w, b = operands.get("relax.matmul"), operands.get("relax.add")
    if not (isinstance(w, ir.GenericConst) and isinstance(b, ir.GenericConst)
            and w in constant_names and b in constant_names):
        raise OffloadError(f"{symbol}: expected matmul by a constant weight plus a constant bias")
    weight, bias = f"{symbol}_packed_weights", str(constant_names[b])
    packed[weight] = pack_dense(w.value.numpy())
    k, n = (int(d) for d in w.value.shape)
    xshape = _shape(func.params[0])
    m = int(np.prod(xshape)) // k
    source = _env().get_template("offload_dense.c.j2").render(symbol=symbol, weight=weight, bias=bias, m=m, k=k, n=n)
    return tvm.get_global_func("runtime.CSourceModuleCreate")(source, "c", [symbol], [weight, bias])


def _codegen(packed: dict[str, np.ndarray], funcs, options, constant_names) -> list:
    return [_emit(packed, f, constant_names) for f in funcs]


def partition(mod, prefix: str, codegens: tuple[str, ...]):
    """Offload what `codegens` match in `mod`; return the module (with `external_mods` and
    `const_name_to_constant` attributes when anything was offloaded)."""
    import tvm
    import tvm_ffi
    from tvm import relax

    unknown = [c for c in codegens if c not in OFFLOAD_CODEGENS]
    if unknown:
        raise OffloadError(f"unknown external codegen(s) {', '.join(unknown)}; known: {', '.join(OFFLOAD_CODEGENS)}")
    if not codegens:
        return mod
    # TVM finds external codegens by global name; each partition registers its own, which collects the packed
    # weights it makes.
    packed: dict[str, np.ndarray] = {}
    tvm_ffi.register_global_func(f"relax.ext.{_CODEGEN}", functools.partial(_codegen, packed), override=True)
    mod = relax.transform.FoldConstant()(mod)
    pattern, annotations = _pattern()
    mod = relax.transform.FuseOpsByPattern([(f"{_CODEGEN}.dense_bias", pattern, annotations, _supported)],
                                           bind_constants=True, annotate_codegen=True)(mod)
    for gv, func in list(mod.functions.items()):
        if func.attrs is not None and "Codegen" in func.attrs:
            # Prefixed per model, like the kernels, so two models can share a binary.
            mod[gv] = func.with_attr("global_symbol", f"{prefix}_{gv.name_hint}")
    mod = relax.transform.RunCodegen()(mod)
    if not packed:
        return mod
    # The packed weights join the constants the modules name; the unpacked ones stay behind, named by none.
    constants = dict(mod.attrs["const_name_to_constant"].items())
    constants.update({name: tvm.runtime.tensor(a) for name, a in packed.items()})
    return mod.with_attr("const_name_to_constant", constants)


def external_modules(mod) -> tuple[list, dict[str, np.ndarray]]:
    """The runtime modules RunCodegen produced, and every constant they need, by name."""
    attrs = mod.attrs if mod.attrs is not None else {}
    modules = list(attrs["external_mods"]) if "external_mods" in attrs else []
    constants = ({str(k): v.numpy() for k, v in attrs["const_name_to_constant"].items()}
                 if "const_name_to_constant" in attrs else {})
    return modules, constants
