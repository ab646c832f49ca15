"""`doit -P dask build`: doit plans, a Dask cluster runs the stages.

doit has no distributed runner (pydoit/doit#257). doit's `run` command gets one more parallel type
(doit_plugins.py, registered in doit.cfg): with `-P dask`, doit still decides what is up to date and keeps its
dependency database in this process, and each stage's action is shipped to a Dask `distributed` cluster: the
scheduler at `scheduler=ADDR`, or a LocalCluster of this machine's cores (`-n N` workers) when none is given. A
worker that dies mid-task loses nothing (every output is written to a temporary name and renamed): the scheduler
runs the task again on another worker, up to ALLOWED_FAILURES times. Workers must see the project and its out
folder at the same paths (one machine, or a shared file system).

Only stage actions travel (tasks/wiring.py `_action`: a module function and picklable arguments); the few
actions that summarise many pairs (the results table, bench.md) run here, as they read what the stages wrote.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from doit.control import TaskControl
from doit.exceptions import BaseFail, TaskError, TaskFailed
from doit.runner import MThreadRunner

from tasks.errors import CrtforgeError

# What a stage asks of a worker, by doit basename: a TVM build can take gigabytes; a tuning search wants the
# worker to itself (its candidates' timings are its measurements). Dask runs a task only on a worker that declares
# the resource: LocalCluster's workers declare WORKER_RESOURCES; an external cluster's workers need
# `--resources "MEMORY=<bytes>,TUNE=1"` (the command checks before it starts).
STAGE_RESOURCES: dict[str, dict[str, float]] = {
    "relax": {"MEMORY": 2 * 2**30}, "tune": {"TUNE": 1}, "retune": {"TUNE": 1},
}
ALLOWED_FAILURES = 3  # a task whose worker died this many times is a failure (distributed's default)


class DaskRunError(CrtforgeError):
    """The cluster cannot run the build: unreachable, or its workers lack a resource a stage needs."""


@dataclass(frozen=True)
class RemoteCall:
    """A stage action as it travels: the function and its arguments (tasks/wiring.py `_action`)."""
    func: Callable[..., Any]
    args: tuple[Any, ...]


def remote_call(task) -> RemoteCall | None:
    """The task's one stage action, or None for a task that runs here."""
    if len(task.actions) != 1:
        return None
    return getattr(getattr(task.actions[0], "py_callable", None), "crtforge_call", None)


def run_remote(call: RemoteCall) -> tuple[BaseFail | None, str, str]:
    """On a worker: the stage, its failure as doit's TaskFailed, and what it printed on stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            call.func(*call.args)
        except CrtforgeError as e:
            return TaskFailed(str(e)), out.getvalue(), err.getvalue()
    return None, out.getvalue(), err.getvalue()


class DaskRunner(MThreadRunner):
    """doit's thread runner whose threads each wait on a Dask future instead of running the action."""

    def __init__(self, client, *args: Any) -> None:
        super().__init__(*args)
        self.client = client

    def execute_task(self, task):
        call = remote_call(task)
        if call is None:
            return super().execute_task(task)
        if task.teardown:
            self.teardown_list.append(task)
        self.reporter.execute_task(task)
        basename = task.name.split(":", 1)[0]
        future = self.client.submit(run_remote, call, key=f"{task.name}-{uuid.uuid4().hex[:8]}", pure=False,
                                    resources=STAGE_RESOURCES.get(basename))
        try:
            failure, printed, warned = future.result()
        except Exception as e:  # the stage raised something not ours, or its worker died ALLOWED_FAILURES times
            return TaskError(f"{task.name} failed on the cluster: {type(e).__name__}: {e}")
        if printed and (task.verbosity == 2 or failure is not None):
            sys.stdout.write(printed)
        sys.stderr.write(warned)  # as doit shows a local task's stderr (the cache's lines)
        return failure


def check_resources(workers: dict[str, Any]) -> None:
    """Some worker has as much of each resource as a stage asks for, or that stage's tasks would wait forever."""
    for stage, need in sorted(STAGE_RESOURCES.items()):
        for name, amount in sorted(need.items()):
            if not any((w.get("resources") or {}).get(name, 0) >= amount for w in workers.values()):
                raise DaskRunError(f"no worker of the cluster has {name}={amount:g}, which the {stage} stage asks "
                                   f"for. HINT: start the workers with --resources \"MEMORY=<bytes>,TUNE=1\" "
                                   f"(MEMORY at least {STAGE_RESOURCES['relax']['MEMORY']:g})")


def local_cluster(workers: int):
    """This machine's cores as a cluster: one process per worker (TVM is not thread-safe), one thread each."""
    from distributed import LocalCluster

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                        resources={"MEMORY": memory // workers, "TUNE": 1})


@contextlib.contextmanager
def connect(address: str | None, workers: int):
    import dask
    from distributed import Client

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = None if address else local_cluster(workers)
        try:
            client = Client(address or cluster, timeout="10s")  # a reachable scheduler answers in milliseconds
        except OSError as e:
            raise DaskRunError(f"cannot reach the Dask scheduler at {address}: {e}. HINT: check scheduler=ADDR "
                               "(tcp://host:8786), or leave it out for a cluster of this machine") from None
        try:
            check_resources(client.scheduler_info()["workers"])
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def execute(command, outfile, verbosity, always, continue_, reporter, num_process, auto_delayed_regex,
            force_verbosity, failure_verbosity) -> int:
    """doit's run command's `_execute` for `-P dask` (doit_plugins.py): the tasks it selected, run on the cluster."""
    from doit import get_var
    from doit.task import Stream

    command.control = TaskControl(command.task_list, auto_delayed_regex=auto_delayed_regex)
    command.control.process(command.sel_tasks)
    reporter_cls = command.reporters[reporter] if isinstance(reporter, str) else reporter
    try:
        if isinstance(outfile, str):
            raise DaskRunError("-P dask writes its report to the console only. HINT: leave out --output-file")
        reporter_obj = (reporter_cls(outfile, {"failure_verbosity": failure_verbosity})
                        if isinstance(reporter_cls, type) else reporter_cls)
        workers = num_process or os.cpu_count() or 1
        with connect(get_var("scheduler"), workers) as client:
            threads = max(workers, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))
            runner = DaskRunner(client, command.dep_manager, reporter_obj, continue_, always,
                                Stream(verbosity, force_verbosity), threads)
            return runner.run_all(command.control.task_dispatcher())
    except DaskRunError as e:
        sys.stderr.write(f"crtforge: {e}\n")
        return 3
