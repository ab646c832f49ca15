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


def test_a_worker_killed_mid_task_is_retried(serial, tmp_path):
    from distributed import Client, LocalCluster

    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"MEMORY": MEMORY, "TUNE": 1}) as cluster, Client(cluster) as client:
        build = subprocess.Popen(doit_argv(tmp_path / "pipeline.toml", "-P", "dask", "build",
                                           f"scheduler={cluster.scheduler_address}"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = []

        def kill_the_first_relax() -> None:
            deadline = time.monotonic() + 120
            while not killed and time.monotonic() < deadline and build.poll() is None:
                for worker, keys in client.processing().items():
                    if any(str(k).startswith("relax:") for k in keys):
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed.append(worker)
                        return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_the_first_relax)
        killer.start()
        stdout, stderr = build.communicate(timeout=600)
        killer.join()
    assert killed, "no relax task was seen running"
    assert build.returncode == 0, stdout[-2000:] + stderr
    assert_same_bytes(serial, tmp_path / "out")


def test_a_worker_killed_mid_trial_costs_a_retry_not_the_search(tmp_path):
    """A tuning search's trials run on the workers; one whose worker is killed is run again (on the worker its
    nanny restarts), and the search ends with every trial measured."""
    from distributed import Client, LocalCluster

    (tmp_path / "pipeline.toml").write_text(
        f'[models.convnet]\nsource = "{ROOT / "models" / "bench" / "convnet.onnx"}"\n[targets.m4]\nbackend = "llvm"\n'
        'toolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\ntune = {trials = 8, batch = 4}\n')
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"MEMORY": MEMORY, "TUNE": 1}) as cluster, Client(cluster) as client:
        tune = subprocess.Popen(doit_argv(tmp_path / "pipeline.toml", "-P", "dask", "tune",
                                          f"scheduler={cluster.scheduler_address}"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = []

        def kill_a_trial_beside_the_search() -> None:
            deadline = time.monotonic() + 120
            while not killed and time.monotonic() < deadline and tune.poll() is None:
                for worker, keys in client.processing().items():
                    keys = [str(k) for k in keys]
                    if any(k.startswith("trial:") for k in keys) and not any(k.startswith("tune:") for k in keys):
                        os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                        killed.append(worker)
                        return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_a_trial_beside_the_search)
        killer.start()
        stdout, stderr = tune.communicate(timeout=600)
        killer.join()
    assert killed, "no trial was seen running beside the search"
    assert tune.returncode == 0, stdout[-2000:] + stderr
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
