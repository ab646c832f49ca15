"""Stage 2, build: lower the Relax module with TVM, compile its TIR kernels, and extract the plan.

The default Relax pipeline lowers `main` to one straight-line block of storage allocations, tensor
allocations and destination-passing kernel calls; that is an ahead-of-time schedule. This stage
keeps the kernels (prefixed per model, so two models can share a binary) and turns `main` into a
`Plan` that the codegen stage emits as C. Nothing of TVM's VM survives into the output.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import fsutil
from tasks.compile.plan import (ARENA_ALIGN, HOME_ARENA, HOME_CONST, HOME_INPUT, STORAGE_OUTPUT, STORAGE_TENSORS,
                                STORAGE_WORKSPACE, Call, Constant, Plan, Storage, Tensor, TuningUse, lower_bound,
                                plan_arena)
from tasks.errors import CrtforgeError
from tasks.frontend.importer import ModelSignature, load_relax_with_sources, read_signature
from tasks.frontend.sources import SourceOps, call_sources, function_sources, match_calls
from tasks.layout import PairFiles, project_relative
from tasks.pair import Pair

# Runtime checks the VM does on `main`'s arguments; the typed C API makes them hold statically.
_IGNORED_EXTERNS = {"vm.builtin.check_tensor_info", "vm.builtin.match_shape"}
_IGNORED_OPS = {"relax.null_value", "relax.vm.kill_object"}


class BuildError(CrtforgeError):
    """TVM produced something the ahead-of-time executor cannot express; says what and where."""


@dataclass(frozen=True)
class BuildResult:
    plan: Plan
    params: dict[str, np.ndarray]  # constant name → weights: the plan's, and those external modules need
    runtime_module: Any  # tvm.runtime.Module: the kernels, importing any external modules; classification walks it
    external_modules: tuple[Any, ...] = ()  # C source modules from external codegens (tasks/offload.py)

    @property
    def kernels_source(self) -> str:
        """TVM's C (c backend) or LLVM IR (llvm backend) of the kernels."""
        return self.runtime_module.inspect_source("ll" if self.runtime_module.kind == "llvm" else "")


def make_target(target_json: dict[str, Any], where: str):
    """The TVM target; `where` names the pipeline key its options came from, for the error."""
    import tvm

    try:
        return tvm.target.Target(target_json)
    except Exception as e:  # TVM raises ValueError or its own errors for unknown or ill-typed options
        first = str(e).strip().splitlines()[0]
        raise BuildError(f"{where}: TVM rejects the target {target_json}: {first}") from None


def group(mod, profile: str = "release"):
    """The ops grouped as the kernels will compute them: release fuses ops into fewer kernels (Relax functions,
    each made one kernel by FuseTIR); both profiles fold constants first, or a TFLite dense layer's weight
    transpose would run on the device, into the arena (1 MB of RAM for a 512x512 layer). The groups' inner
    bindings keep the import's names, which name the source ops (tasks/frontend/sources.py)."""
    import tvm
    from tvm import relax

    if profile == "release":
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(), relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(), relax.transform.FuseOps()])(mod)
    return relax.transform.FoldConstant()(mod)


def fuse(grouped, profile: str = "release"):
    """The Relax module whose TIR functions become the kernels, from `group`'s. The tuning stage
    (tasks/compile/tune.py) tunes exactly these."""
    from tvm import relax

    return relax.transform.FuseTIR()(grouped) if profile == "release" else grouped


def lower(grouped, target, profile: str = "release", records: Path | None = None):
    """Relax's default pipeline, to a straight-line `main`; with `records` (a MetaSchedule database folder,
    tasks/compile/tune.py), each kernel that has a tuning record takes its best schedule first. Returns the
    lowered module and, with records, which kernels they scheduled (plan.TuningUse)."""
    import tvm
    from tvm import relax

    mod = fuse(grouped, profile)
    use = None
    with target:
        if records is not None:
            mod, use = apply_records(mod, records)
        return relax.get_pipeline("default")(mod), use


def apply_records(mod, records: Path):
    """The module with every kernel the records hold a better schedule for scheduled by it."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(records))
    kernels = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    # The tuning stage commits a workload for every kernel it tuned, with a record only where tuning beat TVM's
    # default: a kernel with no workload was not tuned at all (records of an older model).
    normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")  # the key the pass looks records up by
    known = {n for n, f in kernels.items() if database.has_workload(normalize(f))}
    with database:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    tuned = sorted(gv.name_hint for gv, f in mod.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled"))
    return mod, TuningUse(records=project_relative(records), tuned=tuned, default=sorted(known - set(tuned)),
                          missing=sorted(set(kernels) - known))


def _pass_context(profile: str):
    """Release drops the kernels' argument checks (a tenth of their code); debug keeps every one."""
    import tvm

    return tvm.transform.PassContext(config={"tirx.disable_assert": profile == "release"})


class _PlanBuilder:
    """Walks the lowered `main` once and records tensors, storages, constants and calls."""

    def __init__(self, mod, main, prefix: str, source: Path, external: frozenset[str]):
        self.mod, self.prefix, self.source, self.external = mod, prefix, source, external
        self.tensors: list[Tensor] = []
        self.storages: list[Storage] = []
        self.constants: list[Constant] = []
        self.params: dict[str, np.ndarray] = {}
        self.calls: list[Call] = []
        self.kernels: dict[str, Any] = {}  # prefixed symbol → PrimFunc
        self.var_tensor: dict[Any, int] = {}  # Relax Var → tensor id (Vars are keyed by object: names repeat)
        self.var_tuple: dict[Any, list[int]] = {}  # Relax Var bound to a tuple → its tensors
        self.var_storage: dict[Any, int] = {}  # TVM storage Var → its size (checked, not used)
        self.const_tensor: list[tuple[Any, int]] = []  # (GenericConst, tensor id), compared with same_as
        self.step = 0
        self.inputs = [self._new_tensor(p.name, p.ty, HOME_INPUT, i) for i, p in enumerate(main.params)]
        for p, t in zip(main.params, self.inputs):
            self.var_tensor[p] = t

    def _fail(self, what: str) -> BuildError:
        return BuildError(f"{self.source}: {what}")

    def _new_tensor(self, name: str, ty, home: str, index: int, offset: int = 0) -> int:
        shape = tuple(int(v) for v in ty.shape.values)
        return self._add(Tensor(len(self.tensors), name, shape, str(ty.dtype), home, index, offset))

    def _add(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return tensor.id

    def tensor_of(self, expr) -> int:
        """The tensor id an argument refers to, creating constants on first sight."""
        from tvm import ir, relax

        if isinstance(expr, ir.GenericConst):
            for const, tid in self.const_tensor:
                if const.same_as(expr):
                    return tid
            array = expr.value.numpy()
            name = f"c{len(self.constants)}"
            self.constants.append(Constant(name, tuple(array.shape), str(array.dtype)))
            self.params[name] = array
            tid = self._add(Tensor(len(self.tensors), name, tuple(array.shape), str(array.dtype), HOME_CONST,
                                   len(self.constants) - 1))
            self.const_tensor.append((expr, tid))
            return tid
        if isinstance(expr, relax.TupleGetItem):
            return self._touch(self.fields_of(expr.tuple_value)[expr.index])
        if expr in self.var_tensor:
            return self._touch(self.var_tensor[expr])
        raise self._fail(f"unsupported argument {type(expr).__name__} '{expr}' in the lowered main.")

    def fields_of(self, expr) -> list[int]:
        """The tensors of a tuple: written out, or a variable bound to one."""
        from tvm import relax

        if isinstance(expr, relax.Tuple):
            return [self.tensor_of(f) for f in expr.fields]
        if expr in self.var_tuple:
            return [self._touch(t) for t in self.var_tuple[expr]]
        raise self._fail(f"'{expr}' is not a tuple of tensors.")

    def _touch(self, tid: int) -> int:
        """A use of tensor `tid` now: its storage lives at least until this step."""
        base = self.tensors[tid]
        if base.home == HOME_ARENA:
            s = self.storages[base.index]
            s.last = max(s.last, self.step)
        return tid

    def bind(self, binding) -> None:
        from tvm import ir, relax

        self.step += 1
        var, value = binding.var, binding.value
        if isinstance(value, relax.Var) and value in self.var_tuple:  # alias of a tuple
            self.var_tuple[var] = self.fields_of(value)
            return
        if isinstance(value, (relax.Var, relax.TupleGetItem)):  # alias of a tensor
            self.var_tensor[var] = self.tensor_of(value)
            return
        if isinstance(value, relax.Tuple):
            self.var_tuple[var] = self.fields_of(value)
            return
        if not isinstance(value, relax.Call):
            raise self._fail(f"unsupported binding '{var.name}' = {type(value).__name__}.")
        op = value.op
        if isinstance(op, ir.Op):
            if op.name in _IGNORED_OPS:
                return
            if op.name == "relax.vm.alloc_storage":
                # TVM's storages group tensors whose lifetimes do not overlap; crtforge plans every tensor as a
                # buffer of its own instead (tasks/plan.py), so the storage itself allocates nothing.
                self.var_storage[var] = int(value.args[0].values[0])
                return
            if op.name == "relax.vm.alloc_tensor":
                if value.args[0] not in self.var_storage:
                    raise self._fail(f"'{var.name}' is allocated in an unknown storage.")
                sid = len(self.storages)
                self.var_tensor[var] = self._new_tensor(var.name, var.ty, HOME_ARENA, sid)
                self.storages.append(Storage(sid, self.tensors[self.var_tensor[var]].nbytes, self.step, self.step))
                return
            raise self._fail(f"the lowered main uses op '{op.name}', which crtforge's executor does not support.")
        if isinstance(op, relax.ExternFunc):
            if op.global_symbol in _IGNORED_EXTERNS:
                return
            if op.global_symbol in self.external:  # an offloaded function, destination-passing like a kernel
                args = [self.tensor_of(a) for a in value.args]
                self.calls.append(Call(op.global_symbol, args, var.name, self.step))
                return
            if op.global_symbol == "vm.builtin.shape_of":
                # The shape is static (its type says so), and kernels get shapes baked in: nothing to run.
                # A later use of the variable as a tensor argument still fails in tensor_of.
                if not (isinstance(var.ty, relax.ShapeType) and var.ty.values is not None):
                    raise self._fail(f"'{var.name}' = shape_of(...) is not a static shape.")
                return
            if op.global_symbol == "vm.builtin.reshape":
                base = self.tensors[self.tensor_of(value.args[0])]
                alias = self._new_tensor(var.name, var.ty, base.home, base.index, base.offset)
                self.var_tensor[var] = alias
                return
            raise self._fail(f"the lowered main calls '{op.global_symbol}', which crtforge's executor does "
                             "not support.")
        if isinstance(op, ir.GlobalVar):
            func = self.mod[op]
            symbol = f"{self.prefix}_{op.name_hint}"
            self.kernels.setdefault(symbol, func.with_attr("global_symbol", symbol))
            args = [self.tensor_of(a) for a in value.args]
            self.calls.append(Call(symbol, args, var.name, self.step))
            return
        raise self._fail(f"unsupported call target {type(op).__name__} in binding '{var.name}'.")

    def outputs(self, body) -> list[int]:
        from tvm import relax

        self.step += 1  # outputs are read after the last call
        if isinstance(body, relax.Tuple) or (isinstance(body, relax.Var) and body in self.var_tuple):
            return self.fields_of(body)
        return [self.tensor_of(body)]


def extract_plan(lowered, prefix: str, source: Path,
                 external: frozenset[str] = frozenset()) -> tuple[Plan, dict[str, np.ndarray], dict[str, Any]]:
    """The Plan, its constants, and the PrimFuncs `main` calls (renamed to prefixed symbols). `external`
    names the functions external modules define: calls to them are kept as kernel calls."""
    from tvm import relax

    main = lowered["main"]
    body = main.body
    if not isinstance(body, relax.SeqExpr):
        raise BuildError(f"{source}: lowered main is not a sequence of bindings.")
    builder = _PlanBuilder(lowered, main, prefix, source, external)
    for block in body.blocks:
        for binding in block.bindings:
            builder.bind(binding)
    outputs = builder.outputs(body.body)
    for index, tid in enumerate(outputs):
        t = builder.tensors[tid]
        if t.home != HOME_ARENA:
            continue  # an input or a constant returned as is: copied out at the end
        buffer = builder.storages[t.index]
        if buffer.kind == STORAGE_TENSORS and buffer.nbytes == t.nbytes:
            # Computed straight into the caller's output buffer: no arena bytes, no copy.
            buffer.kind, buffer.output = STORAGE_OUTPUT, index
        else:
            buffer.last = builder.step  # the same buffer returned twice: copied out at the end
    called = {c.kernel for c in builder.calls}
    plan = Plan(inputs=builder.inputs, outputs=outputs, tensors=builder.tensors, storages=builder.storages,
                constants=builder.constants, calls=builder.calls, kernels=sorted(called))
    return plan, builder.params, builder.kernels


_WORKSPACE_CALL = re.compile(r"TVMBackendAllocWorkspace\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
_WORKSPACE_SIZE = re.compile(r"^\s*\d+\s*,\s*\w+\s*,\s*T\.uint64\((\d+)\)")


def workspace_bytes(prim_func, symbol: str) -> int:
    """Bytes of workspace a lowered kernel asks for, each request padded as crt/ aligns it.

    Requests are freed LIFO, so their sum bounds the kernel's peak (exact when they nest).
    TVMScript is the only view of lowered TIR that TVM's Python API offers, hence the pattern.
    """
    total = 0
    for m in _WORKSPACE_CALL.finditer(prim_func.script()):
        size = _WORKSPACE_SIZE.match(m.group(1))
        if size is None:
            raise BuildError(f"kernel '{symbol}' asks for a workspace of non-constant size: {m.group(0)}")
        total += (int(size.group(1)) + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN
    return total


def compile_kernels(kernels: dict[str, Any], attrs, target, profile: str = "release") -> tuple[Any, dict[str, int]]:
    """The runtime module of `kernels`, and each kernel's workspace bytes.

    These are the steps of tvm.tirx.build, done here so that the lowered TIR can be read in between.
    """
    import tvm
    from tvm.tirx.build import split_host_device_mods, tir_to_runtime

    with _pass_context(profile):
        mod = tvm.IRModule(kernels, attrs=attrs)
        mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
        pipeline, finalize_host, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
        host_mod, device_mods = split_host_device_mods(pipeline(mod))
        host_mod = finalize_host()(host_mod)
        device_mods = {t: finalize_device()(m) for t, m in device_mods.items()}
        workspace = {gv.name_hint: workspace_bytes(f, gv.name_hint) for gv, f in host_mod.functions.items()}
        return tir_to_runtime(host_mod, device_mods, target), workspace


def add_workspaces(plan: Plan, workspace: dict[str, int]) -> None:
    """Give every call whose kernel needs workspace a storage alive at that call only."""
    for call in plan.calls:
        nbytes = workspace.get(call.kernel, 0)
        if nbytes:
            call.workspace = len(plan.storages)
            plan.storages.append(Storage(call.workspace, nbytes, call.step, call.step, kind=STORAGE_WORKSPACE))


@dataclass(frozen=True)
class Prepared:
    """The model's Relax module with its int8 and offloaded ops partitioned out: the int8 partition, the offload
    partition (whose `mod` goes on to TVM), and where the import's bindings came from in the source model."""
    integer: Any
    offloaded: Any
    sources: SourceOps

    def external_sources(self) -> dict[str, tuple[str, ...]]:
        """The source ops of each function the int8 and offload partitions made, by symbol."""
        functions = {**self.integer.functions, **self.offloaded.functions}
        return {symbol: function_sources(f, self.sources) for symbol, f in functions.items()}


def prepare(source: Path, prefix: str, offload: tuple[str, ...] = (), arm_dsp: bool = False) -> Prepared:
    """The build and the tuning stage start from the same module."""
    from tasks.compile import int8
    from tasks.compile.offload import OffloadError, partition

    mod, sources = load_relax_with_sources(source)
    mod, moved = int8.fold_identity_requantize(mod)
    sources = sources.moved(moved)
    try:
        # int8 first: every later pass (the offload's FoldConstant, lowering) would dequantize the weights.
        integer = int8.partition(mod, prefix, wide_weights=arm_dsp, rounding=rounding_of(source))
    except int8.Int8Error as e:
        raise BuildError(f"{source}: int8: {e}") from None
    try:
        offloaded = partition(integer.mod, prefix, offload)
    except OffloadError as e:
        raise BuildError(f"{source}: offload: {e}") from None
    return Prepared(integer, offloaded, sources)


def build(source: Path, prefix: str, target_json: dict[str, Any], where: str = "target",
          offload: tuple[str, ...] = (), profile: str = "release", arm_dsp: bool = False,
          records: Path | None = None) -> BuildResult:
    from tasks.compile import int8
    from tasks.compile.offload import external_modules

    target = make_target(target_json, where)
    prepared = prepare(source, prefix, offload, arm_dsp)
    integer, offloaded = prepared.integer, prepared.offloaded
    ext_modules, ext_constants = external_modules(offloaded.mod)  # the int8 ones too: RunCodegen keeps earlier ones
    external = frozenset(f for m in ext_modules for f in _functions(m))
    grouped = group(offloaded.mod, profile)
    lowered, plan_tuning = lower(grouped, target, profile, records)
    plan, params, kernels = extract_plan(lowered, prefix, source, external)
    for call, ops in zip(plan.calls, match_calls([c.kernel for c in plan.calls], call_sources(grouped, prepared.sources),
                                                 prefix, prepared.external_sources())):
        call.source_ops = list(ops)
    plan.source_tensors = {op: list(prepared.sources.tensors[op]) for c in plan.calls for op in c.source_ops}
    plan.tuning = plan_tuning
    plan.ops = int8.op_summary(integer.kernels, plan, external, _float_kernels(kernels))
    runtime_module, workspace = compile_kernels(kernels, lowered.attrs, target, profile)
    for ext in ext_modules:
        runtime_module.import_module(ext)
    add_workspaces(plan, {**workspace, **integer.workspace, **offloaded.workspace})
    plan.arena_bytes = plan_arena(plan.storages)
    plan.arena_lower_bound = lower_bound(plan.storages)
    return BuildResult(plan=plan, params={**params, **ext_constants, **integer.constants}, runtime_module=runtime_module,
                       external_modules=tuple(ext_modules))


def rounding_of(source: Path) -> "Rounding":
    """The int8 kernels reproduce the reference of the model's format: onnxruntime for ONNX, TFLM for TFLite."""
    from tasks.compile.quantize import Rounding
    return Rounding.ONNXRUNTIME if source.suffix == ".onnx" else Rounding.TFLITE


def _float_kernels(kernels: dict[str, Any]) -> set[str]:
    """The TVM kernels that compute in float anywhere (their TVMScript names a float dtype)."""
    return {symbol for symbol, func in kernels.items() if "float" in func.script()}


def _functions(module) -> list[str]:
    return [str(f) for f in module.get_function("get_func_names")()]


def external_c(result: BuildResult, model_name: str, source: Path, target_name: str) -> str:
    """The C of every external module, one after another (a comment alone when nothing was offloaded)."""
    import tvm

    parts = [f"/* External modules of model '{model_name}' ({source.name}) for target '{target_name}': the C that "
             f"crtforge's external codegens generated, collected by tasks/compile/relax_build.py (TVM {tvm.__version__}). */\n"]
    if not result.external_modules:
        parts.append("/* Nothing in this model matched an enabled external codegen. */\n")
    parts += [m.inspect_source() for m in result.external_modules]
    return "\n".join(parts)


# TVM's C codegen defines this global in every module; nothing outside kernels.c reads it, so it is made file-local:
# two models' kernels can then be linked into one firmware (TVM's LLVM codegen does not define it).
LIBRARY_CTX = "void* __tvm_ffi__library_ctx = NULL;"


def file_local_library_ctx(source: str) -> str:
    return source.replace(LIBRARY_CTX, "static " + LIBRARY_CTX, 1)


def write_kernels(result: BuildResult, path: Path, model_name: str, source: Path, target_name: str) -> None:
    """kernels.c (TVM's C, with a line saying where it came from) or kernels.o (TVM's LLVM object)."""
    import tvm

    if path.suffix == ".c":
        header = (f"/* Kernels of model '{model_name}' ({source.name}) for target '{target_name}': generated by "
                  f"TVM {tvm.__version__}'s C codegen through crtforge tasks/compile/relax_build.py. Do not edit. */\n")
        fsutil.write_text(path, header + file_local_library_ctx(result.kernels_source))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # TVM picks the format from the suffix
    try:
        result.runtime_module.write_to_file(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def build_pair(p: Pair) -> BuildResult:
    """Stage 2: the pair's kernels, plan.json, params.npz, modules.json and external.c."""
    return run_build(p.model.source, p.model.name, p.model.prefix, p.target.name, p.target.tvm_target(),
                     read_signature(p.model_files.import_json), p.files,
                     where=f"{p.pipeline_file.name}: targets.{p.target.name}.tvm", offload=p.target.offload,
                     profile=p.target.profile, arm_dsp=p.target.board.arm_dsp,
                     records=p.files.tune.dir if p.target.tune else None)


def run_build(source: Path, model_name: str, prefix: str, target_name: str, target_json: dict[str, Any],
              signature: ModelSignature, files: PairFiles, where: str = "target",
              offload: tuple[str, ...] = (), profile: str = "release", arm_dsp: bool = False,
              records: Path | None = None) -> BuildResult:
    """Write the kernels (kernels.c or kernels.o), plan.json, params.npz, modules.json, and external.c (the C of
    the int8 and offloaded ops; a comment alone when there are none)."""
    from tasks.compile.classify import inventory

    result = build(source, prefix, target_json, where, offload, profile, arm_dsp, records)
    if len(result.plan.inputs) != len(signature.inputs) or len(result.plan.outputs) != len(signature.outputs):
        raise BuildError(f"{source}: lowered main has {len(result.plan.inputs)} inputs and "
                         f"{len(result.plan.outputs)} outputs; the model declares {len(signature.inputs)} "
                         f"and {len(signature.outputs)}.")
    if result.plan.tuning and result.plan.tuning.missing:
        print(f"build {target_name}/{model_name}: the tuning records in {records} have no entry for "
              f"{', '.join(result.plan.tuning.missing)} (tuned for another version of the model?): those kernels "
              f"keep TVM's default schedule. HINT: doit retune:{target_name}/{model_name}", file=sys.stderr,
              flush=True)
    write_kernels(result, files.kernels, model_name, source, target_name)
    fsutil.write_text(files.external_c, external_c(result, model_name, source, target_name))
    fsutil.save_npz(files.params_npz, result.params)
    fsutil.write_json(files.modules_json, [m.to_dict() for m in inventory(result.runtime_module)])
    fsutil.write_json(files.plan_json, result.plan.to_dict())
    return result
