"""Bisection: which kernel call first computes something the source model does not.

The pair's executor is compiled once more with -DCRTFORGE_TRACE, which hands every call's outputs to the harness
after the call (crtforge/crt.h); the harness prints them as `crtforge-trace <call> <output> <bytes> <hex>` lines.
That object and the harness, linked before the pair's own library, make out/<target>/<model>/bisect/program.elf,
which runs on the pair's board like its test program. The same intermediates come from the model's reference
runtime: onnxruntime asked for the output of every ONNX node a call names, or TFLM keeping every tensor of a
TFLite model. Each call is compared where the source model has its output (the last source op it computes, with
the same shape: an inner step of an op, or a tensor in a layout TVM chose, has none), with the model's
tolerances; the first call outside them is named, with its source ops, its place in the arena and its worst
elements. A test-only build (`fault_call`) perturbs one call's output, to show that the bisector finds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import fsutil
from tasks.compile.plan import HOME_ARENA, STORAGE_OUTPUT, Plan
from tasks.errors import CrtforgeError
from tasks.execute.compare import compare_one
from tasks.execute.run import RunError, run_logged
from tasks.frontend.importer import ModelSignature, read_signature
from tasks.frontend.reference import format_runtime, onnxruntime_session, tflm_invoked
from tasks.pair import Pair


class BisectError(CrtforgeError):
    """The trace cannot be read, or the reference cannot give the intermediates."""


@dataclass(frozen=True)
class CallCheck:
    index: int
    kernel: str
    source_ops: tuple[str, ...]
    tensor: int  # the plan's tensor id of the call's first output
    where: str  # "arena +OFFSET" or "output buffer N"
    reference_tensor: str | None  # the source model's tensor it is compared with
    compared: bool
    note: str  # why it is not compared, or ""
    passed: bool | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    mismatched: int | None = None
    worst: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Bisection:
    target: str
    model: str
    reference: str  # the runtime the intermediates come from
    fault_call: int | None  # the call a test-only build perturbed
    calls: tuple[CallCheck, ...]
    first_diverging: int | None  # the first compared call outside tolerance

    def summary(self) -> str:
        name = f"{self.target}/{self.model}"
        compared = sum(c.compared for c in self.calls)
        if self.first_diverging is None:
            return (f"bisect {name}: every compared call agrees with {self.reference} ({compared} of "
                    f"{len(self.calls)} calls compared)")
        c = self.calls[self.first_diverging]
        # Nine digits: a float32's last bits, which is where kernels that agree to rounding differ.
        worst = "; ".join(f"[{', '.join(map(str, w['index']))}] {w['actual']:.9g} (reference {w['expected']:.9g})"
                          for w in c.worst[:min(3, c.mismatched or 0)])
        return (f"bisect {name}: call {c.index} is the first that differs from {self.reference}: {c.kernel}, from "
                f"{', '.join(c.source_ops) or 'no known source op'}; output t{c.tensor} in {c.where}; "
                f"{c.mismatched} element{'' if c.mismatched == 1 else 's'} outside tolerance, max abs error "
                f"{c.max_abs_error:.3g} at {worst}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the tracing program -------------------------------------------------------------------------------------

def build_trace_program(p: Pair, fault_call: int | None = None) -> Path:
    """The pair's test program with its executor and crt/'s harness compiled with -DCRTFORGE_TRACE (and, for a
    test, -DCRTFORGE_FAULT_CALL): both objects come first on the link line, so the library's executor is never
    pulled in."""
    from tasks.toolchain.link import CRT_DIR, CRT_HARNESS_SOURCES, CRT_INCLUDE, compile_c, harness_sources, link_program

    f, target = p.files, p.target
    defines = ("CRTFORGE_TRACE",) + (() if fault_call is None else (f"CRTFORGE_FAULT_CALL={fault_call}",))
    includes = [f.dir, CRT_INCLUDE]
    objects = []
    for src in (f.executor_c, *CRT_HARNESS_SOURCES):
        obj = f.bisect_dir / f"{src.stem}.o"
        compile_c(target, src, obj, includes, defines=defines)
        objects.append(obj)
    objects += [f.object_for(src, CRT_DIR) for src in harness_sources(f, target.board) if src not in CRT_HARNESS_SOURCES]
    script = f.linker_script if target.board.kind == "bare-metal" else None
    link_program(target, objects, f.library, f.bisect_program, script)
    return f.bisect_program


def parse_trace(stdout: str, plan: Plan) -> dict[int, np.ndarray]:
    """Each traced tensor by its plan tensor id, shaped and typed as the plan says."""
    outputs = plan.call_outputs()
    traced: dict[int, np.ndarray] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:1] != ["crtforge-trace"]:
            continue
        if len(parts) not in (4, 5):
            raise BisectError(f"a trace line that does not parse: {line[:80]}")
        call, output, nbytes = int(parts[1]), int(parts[2]), int(parts[3])
        data = bytes.fromhex(parts[4]) if len(parts) == 5 else b""
        if call >= len(outputs) or output >= len(outputs[call]):
            raise BisectError(f"the trace names call {call} output {output}, which the plan does not have")
        t = plan.tensors[outputs[call][output]]
        if len(data) != nbytes or nbytes != t.nbytes:
            raise BisectError(f"call {call} output {output}: {len(data)} bytes traced, {t.nbytes} expected")
        traced[t.id] = np.frombuffer(data, dtype=np.dtype(t.dtype)).reshape(t.shape)
    return traced


# --- the reference's intermediates ---------------------------------------------------------------------------

def onnx_intermediates(source: Path, sig: ModelSignature, inputs: dict[str, np.ndarray],
                       names: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime with `names` added to the graph's outputs, graph optimisations off (every node as written)."""
    import onnx

    model = onnx.load(str(source))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    session, feed = onnxruntime_session(model.SerializeToString(), sig, inputs, optimise=False)
    wanted = [o.name for o in session.get_outputs()]
    return {n: np.asarray(v) for n, v in zip(wanted, session.run(wanted, feed)) if n in names}


def tflite_intermediates(source: Path, sig: ModelSignature, inputs: dict[str, np.ndarray],
                         names: list[str]) -> dict[str, np.ndarray]:
    """TFLM's interpreter keeping every tensor, each asked for by its index in the model's first subgraph."""
    import tflite

    subgraph = tflite.Model.GetRootAsModel(source.read_bytes(), 0).Subgraphs(0)
    index = {subgraph.Tensors(i).Name().decode(): i for i in range(subgraph.TensorsLength())}
    interpreter = tflm_invoked(source, sig, inputs, keep_all_tensors=True)
    found = {}
    for n in names:
        if n in index:
            t = interpreter.GetTensor(index[n], 0)  # {"dtype", "shape", "tensor_data"}
            found[n] = np.array(t["tensor_data"], dtype=t["dtype"]).reshape(t["shape"])
    return found


def reference_intermediates(p: Pair, names: list[str]) -> tuple[str, dict[str, np.ndarray]]:
    sig = read_signature(p.model_files.import_json)
    inputs = fsutil.load_npz(p.model_files.inputs_npz)
    kind = format_runtime(p.model.source)
    intermediates = {"onnxruntime": onnx_intermediates, "tflm": tflite_intermediates}[kind]
    return kind, intermediates(p.model.source, sig, inputs, names)


# --- comparing -----------------------------------------------------------------------------------------------

def _where(plan: Plan, tid: int) -> str:
    t = plan.tensors[tid]
    s = plan.storages[t.index]
    if s.kind == STORAGE_OUTPUT:
        return f"output buffer {s.output}"
    return f"arena +{s.offset + t.offset}"


def check_calls(plan: Plan, traced: dict[int, np.ndarray], reference: dict[str, np.ndarray], rtol: float,
                atol: float) -> list[CallCheck]:
    """Each call against the reference tensor of the last source op it computes, where it has one."""
    outputs = plan.call_outputs()
    last_call_of = {c.source_ops[-1]: i for i, c in enumerate(plan.calls) if c.source_ops}
    checks = []
    for i, c in enumerate(plan.calls):
        if not outputs[i]:
            raise BisectError(f"call {i} ({c.kernel}) writes no tensor of its own")
        tid = outputs[i][0]
        base = dict(index=i, kernel=c.kernel, source_ops=tuple(c.source_ops), tensor=tid, where=_where(plan, tid))
        if not c.source_ops:
            checks.append(CallCheck(**base, reference_tensor=None, compared=False, note="no known source op"))
            continue
        op = c.source_ops[-1]
        name = plan.source_tensors[op][0]
        if last_call_of[op] != i:
            checks.append(CallCheck(**base, reference_tensor=None, compared=False,
                                    note=f"an inner step of {op}: the source model has no tensor for it"))
            continue
        if tid not in traced:
            raise BisectError(f"the trace has no output of call {i} ({c.kernel})")
        if name not in reference:
            checks.append(CallCheck(**base, reference_tensor=name, compared=False,
                                    note="the reference does not give this tensor"))
            continue
        ours, theirs = traced[tid], reference[name]
        if tuple(d for d in ours.shape if d != 1) != tuple(d for d in theirs.shape if d != 1):
            checks.append(CallCheck(**base, reference_tensor=name, compared=False,
                                    note=f"shape {list(ours.shape)} here, {list(theirs.shape)} in the source model "
                                         "(a layout the build chose)"))
            continue
        r = compare_one(ours.reshape(theirs.shape), theirs, rtol, atol)
        checks.append(CallCheck(**base, reference_tensor=name, compared=True, note="", passed=r["passed"],
                                max_abs_error=r["max_abs_error"], max_rel_error=r["max_rel_error"],
                                mismatched=r["mismatched"], worst=tuple(r.get("worst", ()))))
    return checks


def run_bisect(p: Pair) -> Bisection:
    """The bisect stage: bisect.json, and its summary printed."""
    result = bisect_pair(p)
    print(result.summary())
    return result


def bisect_pair(p: Pair, fault_call: int | None = None) -> Bisection:
    """Trace the pair on its board, compare every call with the reference, write bisect.json."""
    f = p.files
    plan = Plan.from_dict(fsutil.read_json(f.plan_json))
    if fault_call is not None and not 0 <= fault_call < len(plan.calls):
        raise BisectError(f"fault_call {fault_call}: the plan has calls 0 to {len(plan.calls) - 1}")
    program = build_trace_program(p, fault_call)
    try:
        stdout = run_logged(p.target.board, program, p.target.timeout, f.bisect_log)
    except RunError as e:
        raise BisectError(f"the tracing program did not run: {e}") from None
    traced = parse_trace(stdout, plan)
    names = sorted({plan.source_tensors[c.source_ops[-1]][0] for c in plan.calls if c.source_ops})
    kind, reference = reference_intermediates(p, names)
    checks = check_calls(plan, traced, reference, p.model.rtol, p.model.atol)
    first = next((c.index for c in checks if c.compared and not c.passed), None)
    result = Bisection(p.target.name, p.model.name, kind, fault_call, tuple(checks), first)
    fsutil.write_json(f.bisect_json, result.to_dict())
    return result
