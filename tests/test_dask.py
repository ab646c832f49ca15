"""`doit -P dask build`: doit plans, a Dask cluster runs the stages; the same bytes as a serial build, and a
worker killed mid-task costs a retry, not the build."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import ROOT, SINE, doit_argv, run_doit
from tasks import fsutil
from tasks.dask_run import DaskRunError, STAGE_RESOURCES, check_resources
from tasks.layout import PipelineFiles

PIPELINE = (f'[models.sine]\nsource = "{SINE}"\n[targets.host]\nbackend = "c"\ntoolchain = "host-gcc"\n'
            '[targets.m4]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n')
MEMORY = STAGE_RESOURCES["relax"]["MEMORY"]


def outputs(out: Path) -> dict[str, Path]:
    """Every file a build wrote, by its path in out/ (doit's database records times: not an output)."""
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".crtforge.")}


def assert_same_bytes(a: Path, b: Path) -> None:
    files_a, files_b = outputs(a), outputs(b)
    assert sorted(files_a) == sorted(files_b) and len(files_a) > 20
    differ = [name for name in files_a if not filecmp.cmp(files_a[name], files_b[name], shallow=False)]
    assert differ == []


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("serial")
    (root / "pipeline.toml").write_text(PIPELINE)
    result = run_doit(root / "pipeline.toml", "build")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return root / "out"


def test_a_local_cluster_builds_the_same_bytes(serial, tmp_path):
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    result = run_doit(tmp_path / "pipeline.toml", "-P", "dask", "-n", "2", "build")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert {"relax:host/sine", "relax:m4/sine", "link:m4/sine"} <= set(result.executed())
    assert_same_bytes(serial, tmp_path / "out")
    # doit's database stayed with the planner: nothing to do the second time, cluster or not.
    assert run_doit(tmp_path / "pipeline.toml", "build").executed() == []


def run_killing_a_worker(pipeline: Path, command: str, kills: Callable[[list[str]], bool]):
    """`doit -P dask <command>` on a LocalCluster of two workers, SIGKILLing the first worker whose processing
    task keys satisfy `kills`: the command's (returncode, stdout, stderr), and the killed workers' addresses."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"MEMORY": MEMORY, "TUNE": 1}) as cluster, Client(cluster) as client:
        run = subprocess.Popen(doit_argv(pipeline, "-P", "dask", command, f"scheduler={cluster.scheduler_address}"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed: list[str] = []

        def kill_the_first() -> None:
            deadline = time.monotonic() + 120
            while not killed and time.monotonic() < deadline and run.poll() is None:
                for worker, keys in client.processing().items():
                    if kills([str(k) for k in keys]):
                        os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                        killed.append(worker)
                        return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_the_first)
        killer.start()
        stdout, stderr = run.communicate(timeout=600)
        killer.join()
    return run.returncode, stdout, stderr, killed


def test_a_worker_killed_mid_task_is_retried(serial, tmp_path):
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    returncode, stdout, stderr, killed = run_killing_a_worker(
        tmp_path / "pipeline.toml", "build", lambda keys: any(k.startswith("relax:") for k in keys))
    assert killed, "no relax task was seen running"
    assert returncode == 0, stdout[-2000:] + stderr
    assert_same_bytes(serial, tmp_path / "out")


def test_a_worker_killed_mid_trial_costs_a_retry_not_the_search(tmp_path):
    """A tuning search's trials run on the workers; one whose worker is killed is run again (on the worker its
    nanny restarts), and the search ends with every trial measured."""
    (tmp_path / "pipeline.toml").write_text(
        f'[models.convnet]\nsource = "{ROOT / "models" / "bench" / "convnet.onnx"}"\n[targets.m4]\nbackend = "llvm"\n'
        'toolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\ntune = {trials = 8, batch = 4}\n')
    returncode, stdout, stderr, killed = run_killing_a_worker(
        tmp_path / "pipeline.toml", "tune",
        lambda keys: any(k.startswith("trial:") for k in keys) and not any(k.startswith("tune:") for k in keys))
    assert killed, "no trial was seen running beside the search"
    assert returncode == 0, stdout[-2000:] + stderr
    summary = fsutil.read_json(PipelineFiles(tmp_path / "out").pair("m4", "convnet", "convnet", "llvm").tune.summary_json)
    # Every trial measured by a worker, none failed: the killed one's was run again.
    assert summary["trials"] >= 8 and sum(summary["measured_on"].values()) == summary["trials"]
    progress = [line for line in stderr.splitlines() if line.startswith("tune m4/convnet: ")]
    assert progress and not any("failed" in line for line in progress), stderr[-2000:]


def test_workers_without_the_resources_are_refused_before_anything_runs():
    with pytest.raises(DaskRunError, match=r"no worker of the cluster has MEMORY=2\.14748e\+09, which the relax "
                                           r"stage asks for\. HINT: start the workers with --resources"):
        check_resources({"tcp://a": {"resources": {"TUNE": 1, "MEMORY": 1e9}}})
    check_resources({"tcp://a": {"resources": {"TUNE": 1}}, "tcp://b": {"resources": {"MEMORY": MEMORY}}})


def test_an_unreachable_scheduler_is_named(tmp_path):
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    result = run_doit(tmp_path / "pipeline.toml", "-P", "dask", "build", "scheduler=tcp://127.0.0.1:9")
    assert result.returncode != 0
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "out" / "host").exists()
