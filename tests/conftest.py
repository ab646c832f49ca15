"""Shared fixtures: the repository's models, and a way to run doit on a pipeline file in a temp folder."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SINE = ROOT / "models" / "sine_float.tflite"
CONV2D = ROOT / "models" / "conv2d" / "model.onnx"
CONV2D_DATA = ROOT / "models" / "conv2d" / "test_data_set_0"
CONVT = ROOT / "models" / "convtranspose2d"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class DoitResult:
    returncode: int
    stdout: str
    stderr: str

    def executed(self) -> list[str]:
        """Tasks doit ran (". name"), as opposed to skipped as up to date ("-- name")."""
        return [line[3:] for line in self.stdout.splitlines() if line.startswith(".  ")]

    def skipped(self) -> list[str]:
        return [line[3:] for line in self.stdout.splitlines() if line.startswith("-- ")]


def doit_argv(pipeline: Path, *args: str, root: Path = ROOT) -> list[str]:
    return [sys.executable, "-m", "doit", "-f", str(root / "dodo.py"), "--dir", str(root), *args,
            f"pipeline={pipeline}"]


def run_doit(pipeline: Path, *args: str, root: Path = ROOT, env: dict[str, str] | None = None) -> DoitResult:
    """doit on `pipeline` with the dodo.py of `root` (the repository, or a copy of it); `env`: its environment."""
    proc = subprocess.run(doit_argv(pipeline, *args, root=root), capture_output=True, text=True, timeout=600,
                          env=env)
    return DoitResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def write_pipeline(tmp_path):
    """Writes a pipeline.toml into tmp_path and returns its path."""

    def write(text: str, name: str = "pipeline.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def host_target(name: str = "host", extra: str = "") -> str:
    return f'[targets.{name}]\nbackend = "c"\ntoolchain = "host-gcc"\nrunner = "native"\n{extra}\n'


def target(name: str = "t", backend: str = "c", toolchain: str = "host-gcc", board: str = "host",
           extra: str = "") -> str:
    """A [targets.NAME] table."""
    return f'[targets.{name}]\nbackend = "{backend}"\ntoolchain = "{toolchain}"\nboard = "{board}"\n{extra}\n'


@pytest.fixture(scope="session")
def int8_lib(tmp_path_factory):
    """crt/src/int8.c built once for the host as a shared library (warning-free), for the kernel tests' ctypes."""
    import ctypes

    so = tmp_path_factory.mktemp("int8") / "libint8.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=c11", "-I",
                    str(ROOT / "crt" / "include"), "-o", str(so), str(ROOT / "crt" / "src" / "int8.c")],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(so))
