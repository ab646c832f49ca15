"""Which op of the source model each kernel call came from: ONNX node names, TFLite operator indices.

TVM's ONNX and TFLite frontends keep no spans, so the import records, for each source op, the Relax bindings its
conversion emitted (the bindings up to and including its outputs, in emission order). The names of those
bindings survive legalization and fusion as the names of the fused functions' inner bindings (lv, lv1, ... are
unique per import), and a fused group's output, renamed by FuseOps, is found as the op that reads the group's
other bindings. Each kernel call of the plan then names the source ops its group holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceOps:
    """What the import knew: each binding's source op label, the bindings each binding reads, and each source op's
    output tensors by their names in the source model (what a reference runtime can be asked for)."""
    by_binding: dict[str, str] = field(default_factory=dict)
    reads: dict[str, frozenset[str]] = field(default_factory=dict)
    tensors: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def labels(self, names: list[str]) -> tuple[str, ...]:
        """The source ops of these bindings, each once, in order."""
        return tuple(dict.fromkeys(self.by_binding[n] for n in names if n in self.by_binding))

    def moved(self, moved: dict[str, str]) -> SourceOps:
        """After a rewrite made bindings compute other bindings' ops (new name: old name), label them so."""
        by_binding = {**self.by_binding, **{new: self.by_binding[old] for new, old in moved.items()
                                            if old in self.by_binding}}
        return SourceOps(by_binding, self.reads, self.tensors)


def onnx_label(index: int, node) -> str:
    return f'{node.op_type} "{node.name}"' if node.name else f"{node.op_type} (node {index})"


def tflite_label(index: int, op_code: str) -> str:
    return f"{op_code} (operator {index})"


def _var_names(expr) -> set[str]:
    from tvm import relax

    names: set[str] = set()
    relax.analysis.post_order_visit(expr, lambda e: names.add(e.name) if isinstance(e, relax.Var) else None)
    return names


@dataclass(frozen=True)
class SourceOp:
    label: str
    tensors: tuple[str, ...]  # its outputs' names in the source model
    outputs: list[Any]  # their Relax expressions: Vars, or Calls the frontend bound later (None: not imported)


def attribute(main, ops: list[SourceOp]) -> SourceOps:
    """SourceOps of an imported `main`: every binding belongs to the first op, in source order, whose output is
    bound at or after it."""
    from tvm import relax

    bindings = [b for block in main.body.blocks for b in block.bindings]
    # Relax expressions hash and compare by object (as the plan's Var tables use them): one lookup per output.
    bound_var = {b.var: i for i, b in enumerate(bindings)}
    bound_call = {b.value: i for i, b in enumerate(bindings) if isinstance(b.value, relax.Call)}

    def position(expr) -> int | None:
        return bound_call.get(expr) if isinstance(expr, relax.Call) else bound_var.get(expr)

    ends = []  # (position of the op's last output binding, label)
    for op in ops:
        where = [p for p in (position(e) for e in op.outputs if e is not None) if p is not None]
        if where:
            ends.append((max(where), op.label))
    by_binding: dict[str, str] = {}
    start = 0
    for end, label in sorted(ends, key=lambda e: e[0]):
        for b in bindings[start:end + 1]:
            by_binding[b.var.name] = label
        start = max(start, end + 1)
    reads = {b.var.name: frozenset(_var_names(b.value)) for b in bindings}
    return SourceOps(by_binding, reads, {op.label: op.tensors for op in ops})


# The ops of a QDQ graph that only say how a tensor is quantised: named only when a group holds nothing else.
_QDQ_OPS = ("QuantizeLinear ", "DequantizeLinear ")


def function_sources(func, sources: SourceOps) -> tuple[str, ...]:
    """The source ops a fused or partitioned function computes: those of its inner bindings (and of the composite
    functions inside it), named as the import named them, and of its output, which FuseOps renames: the import
    binding that reads the others."""
    from tvm import relax

    functions: list[Any] = []
    relax.analysis.post_order_visit(func, lambda e: functions.append(e) if isinstance(e, relax.Function) else None)
    inner = [b.var.name for f in functions if isinstance(f.body, relax.SeqExpr) for block in f.body.blocks
             for b in block.bindings if not isinstance(b.value, relax.Function) and not b.var.same_as(f.body.body)]
    known = {n for n in inner if n in sources.by_binding}
    outputs = [n for n, reads in sources.reads.items() if n not in known and reads & known]
    labels = sources.labels(inner + outputs[:1])
    computing = tuple(x for x in labels if not x.startswith(_QDQ_OPS))
    return computing or labels


def call_sources(grouped, sources: SourceOps) -> list[tuple[str, tuple[str, ...]]]:
    """(kernel, source ops) for each kernel `main` of the fused module calls, in order: a fused function (FuseTIR
    gives its kernel its name) by what it holds, an op left alone by its binding's name."""
    import tvm
    from tvm import relax

    # Legalized as the build's pipeline will (no-op where fusion already did), so that every op has its kernel.
    mod = relax.transform.LegalizeOps()(grouped)
    calls = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if not isinstance(v, relax.Call):
                continue
            if isinstance(v.op, tvm.ir.GlobalVar) and isinstance(mod[v.op], relax.Function):
                calls.append((v.op.name_hint, function_sources(mod[v.op], sources)))
            elif getattr(v.op, "name", None) == "relax.call_tir":
                calls.append((v.args[0].name_hint, sources.labels([b.var.name])))
    return calls


def match_calls(kernels: list[str], calls: list[tuple[str, tuple[str, ...]]], prefix: str,
                external: dict[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The source ops of each of the plan's kernel calls, in order: an external function by its symbol, a TVM
    kernel by the next call_tir of the same function (lowering turns some, such as reshapes, into no call)."""
    result = []
    at = 0
    for kernel in kernels:
        if kernel in external:
            result.append(external[kernel])
            continue
        found = next((i for i in range(at, len(calls)) if f"{prefix}_{calls[i][0]}" == kernel), None)
        if found is None:
            result.append(())
            continue
        result.append(calls[found][1])
        at = found + 1
    return result
