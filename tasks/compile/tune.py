"""Stage 2a, tune: MetaSchedule searches schedules for a pair's TVM kernels, costed on the target without hardware.

Each candidate schedule is compiled as the build compiles kernels, linked into a small harness program with the
target's own toolchain, and run by the target's own runner:

- under qemu (Cortex-M, Linux on Arm or RISC-V) its cost is the exact guest instruction count of one kernel call,
  counted by our TCG plugin between the harness's markers: deterministic, and what the bench reports;
- on the host it is wall time (the smallest of several rounds' mean), because the host's goal is onnxruntime's
  wall time: an x86 instruction count would favour long-latency instructions and miss the caches.

Run as a task of `doit -P dask` (tasks/dask_run.py), a qemu-costed search measures its candidates on the cluster's
workers: each trial ships the candidate's TIR to a worker, which compiles, links and counts it there. Instruction
counts are the same on every machine; host timings are not, so a host search measures on its own worker.

The best record of every kernel goes to a MetaSchedule JSON database (`out/<target>/<model>/tune/`); the build
applies it (relax_build.lower). Records committed under `tuning/<target>/<model>/` are copied instead of tuning,
so a fresh clone builds tuned kernels in seconds; `doit retune` tunes again and refreshes them.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks import fsutil
from tasks.config import TargetConfig, Tune
from tasks.errors import CrtforgeError
from tasks.layout import TuneFiles, project_relative
from tasks.pair import Pair

KERNEL_SYMBOL = "crtforge_tune_kernel"
COST_INSTRUCTIONS = "instructions"
COST_WALL_NS = "wall-ns"
# Host timing: rounds of at least this many nanoseconds; the cost is the smallest round's mean.
_HOST_ROUNDS = 7
_HOST_ROUND_NS = 2_000_000
_WALL = re.compile(r"crtforge-tune-ns ([\d.]+)")
HERE = "here"  # TuneResult.measured_on: trials measured by the tuning task's own process


class TuneError(CrtforgeError):
    """Tuning could not run: no kernel to tune, a harness that does not build, or a database that does not load."""


@dataclass(frozen=True)
class KernelResult:
    name: str  # MetaSchedule's task name: the fused Relax function, e.g. fused_matmul_add_relu
    untuned: float  # cost of TVM's default schedule
    best: float  # cost of the best record
    trials: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "untuned": self.untuned, "best": self.best, "trials": self.trials,
                "speedup": self.untuned / self.best if self.best else None}


@dataclass(frozen=True)
class TuneResult:
    cost: str  # COST_INSTRUCTIONS or COST_WALL_NS
    source: str  # "tuned" (this run searched) or "committed" (records copied from tuning/)
    kernels: list[KernelResult]
    trials: int
    seconds: float
    records_bytes: int
    # trials measured per Dask worker address, or HERE; empty for committed records
    measured_on: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cost": self.cost, "source": self.source, "trials": self.trials, "seconds": round(self.seconds, 1),
                "records_bytes": self.records_bytes, "measured_on": dict(sorted(self.measured_on.items())),
                "kernels": [k.to_dict() for k in self.kernels]}


def cost_of(target: TargetConfig) -> str:
    return COST_WALL_NS if target.runner == "native" else COST_INSTRUCTIONS


def tuning_target(target: TargetConfig):
    """The TVM target MetaSchedule tunes for: the build's, on one core (MetaSchedule requires `num-cores`)."""
    from tasks.compile.relax_build import make_target

    return make_target({**target.tvm_target(), "num-cores": 1}, f"targets.{target.name}.tvm")


def search_space(target: TargetConfig):
    """TVM's LLVM rules without threads (the runtime has no thread pool) and without layout rewriting (the build
    keeps the weights as the model has them). Vectorising is kept: LLVM scalarises where the target has no
    vectors, and unrolls usefully on Cortex-M."""
    from tvm.s_tir import meta_schedule as ms

    rules = [ms.schedule_rule.ApplyCustomRule(), ms.schedule_rule.InlineConstantScalars(),
             ms.schedule_rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                                         disallow_if_then_else=True, require_injective=True, require_ordered=True,
                                         disallow_op=["tirx.exp"]),
             ms.schedule_rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64,
                                               reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2],
                                                                                      scope="global")),
             ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=-1, max_vectorize_extent=64,
                                                         unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
             ms.schedule_rule.RandomComputeLocation()]
    postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                 ms.postproc.RewriteReductionBlock()]
    mutators = {ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateComputeLocation(): 0.05,
                ms.mutator.MutateUnroll(): 0.05}
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs=mutators)


def search_strategy(settings: Tune):
    """MetaSchedule's evolutionary search, its population scaled to the budget: the default 512 candidates per
    generation cost half a minute of Python per kernel, which a run of a few trials would spend on nothing."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(32, 8 * settings.trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population // 2))


def tuning_tasks(p: Pair) -> tuple[Any, list[Any]]:
    """The module the build lowers, and MetaSchedule's tasks: one per distinct TVM kernel."""
    from tvm.s_tir import meta_schedule as ms

    from tasks.compile.relax_build import fuse, group, prepare

    offloaded = prepare(p.model.source, p.model.prefix, p.target.offload, p.target.board.arm_dsp).offloaded
    mod = fuse(group(offloaded.mod, p.target.profile), p.target.profile)
    return mod, list(ms.relax_integration.extract_tasks(mod, tuning_target(p.target)))


# --- the harness: one kernel, its arguments, one measured call ---------------------------------------------------

@dataclass(frozen=True)
class Argument:
    ctype: str
    shape: tuple[int, ...]
    dtype: str
    code: int  # DLDataTypeCode
    bits: int

    @property
    def size(self) -> int:
        return max(int(np.prod(self.shape)), 1)


_DL_CODES = {"int": 0, "uint": 1, "float": 2}


def kernel_arguments(func) -> list[Argument]:
    """The tensor arguments of a PrimFunc, in order."""
    from tvm.s_tir import meta_schedule as ms

    from tasks.emit.codegen import ctype

    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        dtype = str(info.dtype)
        kind = re.match(r"[a-z]+", dtype)
        bits = re.search(r"\d+", dtype)
        if kind is None or bits is None or kind.group(0) not in _DL_CODES:
            raise TuneError(f"a kernel argument of dtype {dtype} cannot be filled by the tuning harness")
        args.append(Argument(ctype(dtype), tuple(int(d) for d in info.shape), dtype, _DL_CODES[kind.group(0)],
                             int(bits.group(0))))
    return args


class Harness:
    """Compiles and links one candidate kernel into a program that calls it once between the bench markers (qemu),
    or times it (the host). The runtime objects are compiled once per tuning run."""

    def __init__(self, target: TargetConfig, work: Path):
        from tasks.toolchain.link import (BARE_METAL_SOURCES, CRT_DIR, CRT_HARNESS_SOURCES, CRT_INCLUDE,
                                          compile_c, linker_script)

        self.target, self.work = target, work
        self.includes = [work, CRT_INCLUDE]
        sources = [CRT_DIR / "src" / "crt.c", *CRT_HARNESS_SOURCES]
        if target.board.kind == "bare-metal":
            sources += list(BARE_METAL_SOURCES)
        self.runtime = []
        for src in sources:
            obj = work / f"crt_{src.stem}.o"
            compile_c(target, src, obj, self.includes)
            self.runtime.append(obj)
        self.script = None
        if target.board.kind == "bare-metal":
            self.script = work / "board.ld"
            fsutil.write_text(self.script, linker_script(target.board))

    def build(self, func, name: str, index: int, tvm_target) -> Path:
        """The linked program of candidate `index` of kernel `name`."""
        from tasks.compile.relax_build import compile_kernels
        from tasks.emit.codegen import _env
        from tasks.toolchain.link import archive, compile_c, link_program

        # A folder of its own: on a cluster, several searches' candidates share a worker's harness.
        d = Path(tempfile.mkdtemp(dir=self.work, prefix=f"c{index}-"))
        module, workspace = compile_kernels({KERNEL_SYMBOL: func.with_attr("global_symbol", KERNEL_SYMBOL)}, None,
                                            tvm_target, self.target.profile)
        kernel = d / "kernel.o"
        module.write_to_file(str(kernel))
        native = self.target.runner == "native"
        source = d / "harness.c"
        fsutil.write_text(source, _env().get_template("tune_harness.c.j2").render(
            kernel=name, target=self.target.name, symbol=KERNEL_SYMBOL, args=kernel_arguments(func),
            workspace=max(workspace.get(KERNEL_SYMBOL, 0), 64), timed=native, rounds=_HOST_ROUNDS,
            round_ns=_HOST_ROUND_NS))
        harness = d / "harness.o"
        compile_c(self.target, source, harness, self.includes)
        library = d / "libkernel.a"
        archive(self.target.toolchain, [kernel, *self.runtime], library)
        program = d / "program.elf"
        link_program(self.target, [harness], library, program, self.script)
        return program

    def cost(self, program: Path, plugin: Path | None) -> float:
        """Instructions of one call (qemu), or nanoseconds per call (the host)."""
        from tasks.bench.qemu_insns import count_instructions, marker_addresses
        from tasks.execute.run import runner_argv

        argv = runner_argv(self.target.board, program)
        if self.target.runner == "native":
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.target.timeout)
            m = _WALL.search(proc.stdout)
            if proc.returncode != 0 or m is None:
                raise TuneError(f"{program}: exit {proc.returncode}: {proc.stdout[-300:]}{proc.stderr[-300:]}")
            return float(m.group(1))
        assert plugin is not None
        start, stop = marker_addresses(program, "crtforge_bench_start", "crtforge_bench_stop")
        count, regions, stdout = count_instructions(argv, plugin, start, stop, self.target.timeout)
        if regions != 1 or "crtforge-done" not in stdout:
            raise TuneError(f"{program}: the kernel did not finish ({regions} measured regions): {stdout[-300:]}")
        return float(count)


# --- MetaSchedule's builder and runner -------------------------------------------------------------------------

def _ms_classes():
    """The builder, runner and progress callback, defined on first use: MetaSchedule loads only when tuning."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    @derived_object
    class HarnessBuilder(PyBuilder):
        """Links every candidate into a harness program, on a thread each (TVM's codegen and gcc do not hold
        Python's lock for long); the artifact is the program's path."""

        def __init__(self, harness: Harness, jobs: int):
            super().__init__()
            self.harness, self.jobs, self.count = harness, jobs, 0

        def build(self, build_inputs):
            def one(item):
                index, inp = item
                try:
                    func = inp.mod["main"]
                    return BuilderResult(str(self.harness.build(func, f"candidate {index}", index, inp.target)), None)
                except Exception as e:  # a candidate that does not compile is a failed trial, not a failed tune
                    return BuilderResult(None, f"{type(e).__name__}: {e}")

            items = list(enumerate(build_inputs, start=self.count))
            self.count += len(items)
            with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
                return list(pool.map(one, items))

    @derived_object
    class DoneFuture(PyRunnerFuture):
        """A measurement in flight (a thread's future here, or a Dask future): its cost, and where it ran."""

        def __init__(self, future, measured_on: collections.Counter):
            super().__init__()
            self.future, self.measured_on = future, measured_on

        def done(self) -> bool:
            return self.future.done()

        def result(self):
            try:
                cost, where = self.future.result()
            except Exception as e:
                return RunnerResult(None, f"{type(e).__name__}: {e}")
            self.measured_on[where] += 1
            return RunnerResult([cost * 1e-9], None)

    @derived_object
    class HarnessRunner(PyRunner):
        """Runs the programs with the target's runner: qemu in parallel, the host one at a time (timings)."""

        def __init__(self, harness: Harness, plugin: Path | None, jobs: int):
            super().__init__()
            self.harness, self.plugin = harness, plugin
            self.pool = concurrent.futures.ThreadPoolExecutor(jobs)
            self.measured_on: collections.Counter = collections.Counter()

        def run(self, runner_inputs):
            return [DoneFuture(self.pool.submit(lambda path: (self.harness.cost(path, self.plugin), HERE),
                                                Path(inp.artifact_path)), self.measured_on)
                    for inp in runner_inputs]

    @derived_object
    class CandidateWriter(PyBuilder):
        """For a cluster: each candidate's TIR as TVM's JSON, to ship to a worker; compiling is the worker's."""

        def __init__(self, work: Path):
            super().__init__()
            self.work, self.count = work, 0

        def build(self, build_inputs):
            import tvm

            results = []
            for inp in build_inputs:
                path = Path(tempfile.mkdtemp(dir=self.work, prefix=f"c{self.count}-")) / "candidate.json"
                path.write_text(tvm.ir.save_json(inp.mod))
                results.append(BuilderResult(str(path), None))
                self.count += 1
            return results

    @derived_object
    class ClusterRunner(PyRunner):
        """Each candidate compiled, linked and counted by a worker of the Dask cluster (measure_on_worker)."""

        def __init__(self, client, target: TargetConfig, pair: str):
            super().__init__()
            self.client, self.target, self.pair, self.count = client, target, pair, 0
            self.measured_on: collections.Counter = collections.Counter()

        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                candidate = Path(inp.artifact_path).read_text()
                futures.append(DoneFuture(self.client.submit(
                    measure_on_worker, self.target, candidate, self.count, pure=False,
                    key=f"trial:{self.pair}-{self.count}-{os.urandom(4).hex()}"), self.measured_on))
                self.count += 1
            return futures

    @derived_object
    class Progress(PyMeasureCallback):
        """One line per batch: trials done of the total, and each kernel's best cost against its untuned one.
        It sees every measurement, so it also keeps each kernel's best candidate for write_best."""

        def __init__(self, pair: str, total: int, untuned: dict[str, float], unit: str, started: float, out,
                     measured_on: collections.Counter):
            super().__init__()
            self.pair, self.total, self.untuned, self.unit, self.out = pair, total, untuned, unit, out
            self.measured_on = measured_on
            self.done, self.trials, self.started = 0, {}, started
            self.found: dict[str, Found] = {}

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            name = task_scheduler.tasks_[task_id].ctx.task_name
            self.done += len(runner_results)
            self.trials[name] = self.trials.get(name, 0) + len(runner_results)
            for candidate, r in zip(measure_candidates, runner_results):
                if r.error_msg is None and r.run_secs:
                    cost = float(r.run_secs[0]) * 1e9
                    if name not in self.found or cost < self.found[name].cost:
                        self.found[name] = Found(cost, candidate.sch.trace, list(r.run_secs),
                                                 list(candidate.args_info))
            failed = sum(1 for r in runner_results if r.error_msg is not None)
            bests = ", ".join(f"{k} {v:,.0f} (untuned {self.untuned[k]:,.0f})"
                              for k, v in sorted((k, f.cost) for k, f in self.found.items()))
            workers = [w for w in self.measured_on if w != HERE]
            print(f"tune {self.pair}: {self.done}/{self.total} trials, {time.monotonic() - self.started:.0f} s"
                  f"{f' on {len(workers)} Dask worker' + 's' * (len(workers) != 1) if workers else ''}"
                  f"{f', {failed} failed' if failed else ''}"
                  f"; best {self.unit}: {bests}", file=self.out, flush=True)

    return HarnessBuilder, HarnessRunner, CandidateWriter, ClusterRunner, Progress


def _plugin(work: Path) -> Path:
    from tasks.bench.qemu_insns import build_plugin

    return build_plugin(work / "plugin")


def untuned_costs(tasks: list[Any], harness: Harness, plugin: Path | None, tvm_target) -> dict[str, float]:
    """TVM's default schedule of each kernel, measured the same way: the figure tuning must beat."""
    return {t.task_name: harness.cost(harness.build(t.dispatched[0]["main"], f"{t.task_name}, TVM's default schedule",
                                                    -1 - i, tvm_target), plugin)
            for i, t in enumerate(tasks)}


@contextlib.contextmanager
def _no_tensor_intrinsics():
    """TVM's TuneContext imports tvm.s_tir.tensor_intrin, which parses some 250 TVMScript intrinsics (CUDA,
    Hexagon, ...) for tensorize rules: 30 s here, longer than a small tuning run. Our search space has no
    tensorize rule, so while the contexts are made that module is an empty one."""
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        del sys.modules[name]


def search(p: Pair, settings: Tune, out_dir: Path, progress=sys.stderr) -> TuneResult:
    """Tune the pair's kernels with `settings.trials` trials in all; write the best record of each kernel to
    `out_dir` (a MetaSchedule JSON database)."""
    from tvm.s_tir import meta_schedule as ms

    started = time.monotonic()
    # MetaSchedule's own tables go to its log files only; the Progress callback reports to the user.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    _, tasks = tuning_tasks(p)
    if not tasks:  # every op is int8 or offloaded: an empty database, so the build's inputs exist all the same
        write_best({}, [], {}, {}, out_dir)
        return TuneResult(cost=cost_of(p.target), source="tuned", kernels=[], trials=0,
                          seconds=time.monotonic() - started, records_bytes=TuneFiles(out_dir).nbytes)
    target = tuning_target(p.target)
    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="crtforge-tune-") as tmp, _cluster(p.target) as client:
        work = Path(tmp)
        harness = Harness(p.target, work)
        plugin = None if p.target.runner == "native" else _plugin(work)
        untuned = untuned_costs(tasks, harness, plugin, target)
        harness_builder, harness_runner, candidate_writer, cluster_runner, progress_cls = _ms_classes()
        if client is None:
            builder = harness_builder(harness, jobs)
            # The host's timings run one at a time: two at once on two cores would time each other.
            runner = harness_runner(harness, plugin, 1 if p.target.runner == "native" else jobs)
        else:
            builder, runner = candidate_writer(work), cluster_runner(client, p.target, p.name)
        unit = "ns" if cost_of(p.target) == COST_WALL_NS else "instructions"
        progress_callback = progress_cls(p.name, settings.trials, untuned, unit, started, progress, runner.measured_on)
        callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.RemoveBuildArtifact(),
                     ms.measure_callback.UpdateCostModel(), progress_callback]
        with _no_tensor_intrinsics():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks, str(work / "ms"), space=search_space(p.target), strategy=search_strategy(settings),
                num_threads=jobs, seed=settings.seed)
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work / "ms"),
                           max_trials_global=settings.trials,
                           num_trials_per_iter=min(settings.per_batch, settings.trials),
                           builder=builder, runner=runner, database=ms.database.MemoryDatabase(),
                           cost_model="xgb", measure_callbacks=callbacks)
        kernels = write_best(progress_callback.found, tasks, untuned, progress_callback.trials, out_dir)
    files = TuneFiles(out_dir)
    # Trials measured: MetaSchedule stops after the batch that reaches the budget, and a kernel with few
    # schedules left makes a short batch, so this can pass `settings.trials` by part of a batch.
    return TuneResult(cost=cost_of(p.target), source="tuned", kernels=kernels, trials=progress_callback.done,
                      seconds=time.monotonic() - started, records_bytes=files.nbytes,
                      measured_on=dict(runner.measured_on))


@contextlib.contextmanager
def _cluster(target: TargetConfig):
    """A client of the Dask cluster this search runs on as a task of `doit -P dask`, or None: a local run, or a
    host search (wall times compare only when measured on one machine, one at a time). The task leaves its
    worker's thread pool while it waits, so that worker measures trials too."""
    if target.runner == "native":
        yield None
        return
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        yield None
        return
    with worker_client() as client:
        yield client


# A worker's harness per target (its runtime objects and qemu plugin), made by its first trial, not every trial.
_WORKER_HARNESSES: dict[str, tuple[TargetConfig, Harness, Path | None]] = {}
_WORKER_LOCK = threading.Lock()


def _worker_harness(target: TargetConfig) -> tuple[Harness, Path | None]:
    with _WORKER_LOCK:
        known = _WORKER_HARNESSES.get(target.name)
        if known is None or known[0] != target:
            work = Path(tempfile.mkdtemp(prefix="crtforge-trials-"))
            atexit.register(shutil.rmtree, work, True)
            known = (target, Harness(target, work), None if target.runner == "native" else _plugin(work))
            _WORKER_HARNESSES[target.name] = known
        return known[1], known[2]


def measure_on_worker(target: TargetConfig, candidate: str, index: int) -> tuple[float, str]:
    """On a Dask worker: the cost of one candidate (an IRModule in TVM's JSON), and the worker's address."""
    import tvm
    from distributed import get_worker

    harness, plugin = _worker_harness(target)
    program = harness.build(tvm.ir.load_json(candidate)["main"], f"candidate {index}", index, tuning_target(target))
    try:
        return harness.cost(program, plugin), get_worker().address
    finally:
        shutil.rmtree(program.parent, ignore_errors=True)


@dataclass
class Found:
    """The best candidate measured for one kernel: its cost (instructions or ns) and what a record needs."""
    cost: float
    trace: Any
    run_secs: list[Any]
    args_info: list[Any]


def write_best(found: dict[str, Found], tasks: list[Any], untuned: dict[str, float], trials: dict[str, int],
               out_dir: Path) -> list[KernelResult]:
    """A database holding only the best record of each kernel, in task order: small enough to commit, and the
    same records always give the same files. Every kernel gets its workload, so the build can tell a kernel
    whose untuned schedule stayed best (no record) from one these records never saw."""
    from tvm.s_tir import meta_schedule as ms

    tmp = _new_dir(out_dir)
    try:
        best_db = ms.database.JSONDatabase(work_dir=str(tmp))
        results = []
        for task in tasks:
            mod, name = task.dispatched[0], task.task_name
            workload = best_db.commit_workload(mod)
            best = untuned[name]
            if name in found and found[name].cost < best:
                f = found[name]
                best = f.cost
                best_db.commit_tuning_record(ms.database.TuningRecord(f.trace, workload, f.run_secs, task.target,
                                                                      f.args_info))
            results.append(KernelResult(name, untuned[name], best, trials.get(name, 0)))
        del best_db
        files = TuneFiles(tmp)
        for f in (files.workloads, files.records):
            if not f.exists():
                f.write_text("")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _new_dir(beside: Path) -> Path:
    """An empty folder next to `beside`, to fill and then swap into its place."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=beside.parent, prefix=f".{beside.name}."))
    tmp.chmod(0o755)  # mkdtemp's 0700 would end up on the committed folder
    return tmp


def _replace_dir(new: Path, old: Path) -> None:
    """Swap a finished folder into place, so no reader ever sees half a database."""
    trash = old.with_name(f".{old.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    if old.exists():
        old.replace(trash)
    new.replace(old)
    shutil.rmtree(trash, ignore_errors=True)


def copy_records(src: Path, out_dir: Path) -> None:
    """Committed records into the pair's out folder, whole or not at all."""
    tmp = _new_dir(out_dir)
    try:
        for f in (TuneFiles(src).workloads, TuneFiles(src).records):
            shutil.copyfile(f, tmp / f.name)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- stage entry points -----------------------------------------------------------------------------------------

def tune_pair(p: Pair) -> TuneResult:
    """Stage 2a: the pair's tuning records in out/<target>/<model>/tune/: the committed ones if there are, else
    a MetaSchedule search of `tune.trials` trials. tune.json says which, and what the tuning gained."""
    assert p.target.tune is not None
    committed = p.tuning_files
    if committed.exists():
        # The build checks that the records cover the model's kernels (plan.json `tuning`).
        copy_records(committed.dir, p.files.tune.dir)
        summary = fsutil.read_json(committed.summary_json) if committed.summary_json.exists() else {}
        result = TuneResult(cost=cost_of(p.target), source="committed",
                            kernels=[KernelResult(**{k: v for k, v in kr.items() if k != "speedup"})
                                     for kr in summary.get("kernels", [])],
                            trials=summary.get("trials", 0), seconds=summary.get("seconds", 0.0),
                            records_bytes=committed.nbytes)
        fsutil.write_json(p.files.tune.summary_json, {**result.to_dict(), "committed": project_relative(committed.dir)})
        return result
    result = search(p, p.target.tune, p.files.tune.dir)
    fsutil.write_json(p.files.tune.summary_json, result.to_dict())
    return result


def retune_pair(p: Pair) -> TuneResult:
    """Tune again, whatever is committed, and make the new records the committed ones (tuning/<target>/<model>/):
    `doit retune`, then commit the folder."""
    assert p.target.tune is not None
    result = search(p, p.target.tune, p.files.tune.dir)
    summary = {**result.to_dict(), "pair": p.name}
    fsutil.write_json(p.files.tune.summary_json, result.to_dict())
    copy_records(p.files.tune.dir, p.tuning_files.dir)
    fsutil.write_json(p.tuning_files.summary_json, summary)
    return result
