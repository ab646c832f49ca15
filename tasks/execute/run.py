"""Stage 6a, run: execute the test program with the target's runner and collect its outputs.

The program prints `crtforge-output <index> <nbytes> <hex>` per output and `crtforge-done` at the end
(crt/src/harness.c); anything else — a non-zero exit, a missing line, a timeout — is a RunError.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np

from tasks import fsutil
from tasks.config import Board
from tasks.frontend.importer import ModelSignature, read_signature
from tasks.pair import Pair
from tasks.errors import CrtforgeError


class RunError(CrtforgeError):
    """The test program did not run to completion: says how it ended."""


def runner_argv(board: Board, program: Path) -> list[str]:
    """The board's command with the program in place of "{program}"; its emulator must be installed, and a
    program run natively must be built for this machine."""
    argv = [str(program) if a == "{program}" else a for a in board.run]
    if board.run[0] == "{program}":
        _check_native(board, program)
    elif shutil.which(argv[0]) is None:
        raise RunError(f"{board.file.name}: '{argv[0]}' is not installed (board '{board.name}'). "
                       f"HINT: apt-get install {board.debian_package}")
    return argv


# ELF e_machine of this machine's programs, by platform.machine().
_NATIVE_MACHINES = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64", "riscv64": "EM_RISCV", "armv7l": "EM_ARM"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This machine's CPU feature flags (the x86 `flags` line, or Arm's `Features`); empty where not readable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    m = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def _check_native(board: Board, program: Path) -> None:
    """A cross-compiled program run natively fails with 'Exec format error': say which toolchain is wrong."""
    import platform

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    missing = sorted(set(board.cpu_flags) - cpu_flags())
    if missing:
        raise RunError(f"{program.name} is built for board '{board.name}', which needs CPU features this machine "
                       f"lacks: {', '.join(missing)} (from {board.file.name}'s cpu_flags).",
                       hint="build for board \"host\" on this machine, or run on a CPU that has them")
    want = _NATIVE_MACHINES.get(platform.machine())
    try:
        with open(program, "rb") as f:
            machine = ELFFile(f)["e_machine"]
    except (ELFError, OSError):
        return  # not an ELF file we can read: let the run itself say what happens
    if want is not None and machine != want:
        raise RunError(f"{program.name} is built for {machine.removeprefix('EM_')}, but board '{board.name}' runs "
                       f"programs natively on this {platform.machine()} machine.",
                       hint="give the target a board for that machine (e.g. board = \"qemu-aarch64\"), or a "
                            "toolchain for this one (host-gcc)")


def parse_outputs(stdout: str, sig: ModelSignature) -> dict[str, np.ndarray]:
    found: dict[int, bytes] = {}
    done = False
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["crtforge-output"] and len(parts) in (3, 4):
            index, nbytes = int(parts[1]), int(parts[2])
            data = bytes.fromhex(parts[3]) if len(parts) == 4 else b""
            if len(data) != nbytes:
                raise RunError(f"output {index}: {len(data)} bytes printed, {nbytes} announced.")
            found[index] = data
        elif parts[:1] == ["crtforge-error"]:
            raise RunError(f"the program reported: {line}")
        elif parts[:1] == ["crtforge-fault"]:
            raise RunError(f"the program crashed: {line}")
        elif parts[:1] == ["crtforge-done"]:
            done = True
    if not done:
        raise RunError("the program ended without printing 'crtforge-done'.")
    outputs = {}
    for i, spec in enumerate(sig.outputs):
        if i not in found:
            raise RunError(f"the program printed no output {i} ('{spec.name}').")
        arr = np.frombuffer(found[i], dtype=np.dtype(spec.dtype))
        if arr.size != int(np.prod(spec.shape)):
            raise RunError(f"output {i} ('{spec.name}') has {arr.size} elements, expected shape {spec.shape}.")
        outputs[spec.c_name] = arr.reshape(spec.shape)
    return outputs


def run_logged(board: Board, program: Path, timeout: float, log: Path) -> str:
    """Run `program` on `board`, log the run, and return its standard output; a crash, a non-zero exit or a timeout
    is a RunError."""
    argv = runner_argv(board, program)
    where = f"on board '{board.name}' (runner '{board.runner}')"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except OSError as e:  # e.g. Exec format error, permission denied
        raise RunError(f"{program.name} cannot be started {where}: {e.strerror} ({argv[0]}).",
                       hint=f"check the board's run command in {board.file.name}") from None
    except subprocess.TimeoutExpired:
        raise RunError(f"{program.name} did not finish within {timeout:g} s {where}: it hangs, or the model is "
                       "slow. HINT: raise the target's 'timeout' in pipeline.toml if the model is just slow.") from None
    fsutil.write_text(log, f"$ {' '.join(argv)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}"
                           f"--- stderr\n{proc.stderr}")
    # A fault handler's line may arrive on stderr (semihosting), and the exit status may not say it.
    fault = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("crtforge-fault")]
    if fault:
        raise RunError(f"{program.name} crashed {where}: {fault[0]}; see {log.name}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        how = (f"was killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exited with status {proc.returncode}")
        raise RunError(f"{program.name} {how} {where}; see {log.name}:\n{tail}")
    return proc.stdout


def run_program(board: Board, program: Path, sig: ModelSignature, timeout: float, out_npz: Path,
                log: Path) -> dict[str, np.ndarray]:
    outputs = parse_outputs(run_logged(board, program, timeout, log), sig)
    fsutil.save_npz(out_npz, outputs)
    return outputs


def execute_pair(p: Pair) -> dict[str, np.ndarray]:
    """Stage 6a: run program.elf with the target's runner; outputs.npz and run.log."""
    f = p.files
    return run_program(p.target.board, f.program, read_signature(p.model_files.import_json), p.target.timeout,
                       f.outputs_npz, f.run_log)
