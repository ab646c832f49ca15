"""Exact guest instruction counts for one region of a program, under qemu (system or user mode).

The region is marked in the program by two noinline functions (e.g. crtforge_bench_start/stop); the
TCG plugin bench/plugin/crtforge_insns.c counts the instructions executed strictly between entering
the one and entering the other (see that file for the exact accounting). Counts are deterministic:
qemu executes guest instructions, not cycles, so the same binary gives the same count on every run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from elftools.elf.elffile import ELFFile
from tasks.config import PROJECT_ROOT
from tasks.errors import CrtforgeError

PLUGIN_SOURCE = PROJECT_ROOT / "bench" / "plugin" / "crtforge_insns.c"
_RESULT = re.compile(r"crtforge-insns (\d+) regions=(\d+)")
_MARKS = re.compile(r"^crtforge-marks((?: \d+)*)$", re.M)


class QemuInsnsError(CrtforgeError):
    """The plugin could not be built, a marker is missing, or the run gave no count."""


def build_plugin(out_dir: Path) -> Path:
    """Compile the plugin into out_dir/crtforge_insns.so (atomically: concurrent builders never see half a file)."""
    cc = shutil.which("gcc")
    if cc is None:
        raise QemuInsnsError("gcc is not installed (needed to build the qemu plugin). HINT: apt-get install gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "crtforge_insns.so"
    tmp = out_dir / f".crtforge_insns.{os.getpid()}.so.tmp"  # per-process name, then an atomic rename
    argv = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(PLUGIN_SOURCE.parent),
            "-o", str(tmp), str(PLUGIN_SOURCE)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise QemuInsnsError(f"building the qemu plugin failed: {' '.join(argv)}\n{proc.stderr.strip()}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def marker_addresses(elf: Path, *names: str) -> tuple[int, ...]:
    """Addresses of the marker functions' first instructions, from the ELF symbol table."""
    with elf.open("rb") as f:
        elffile = ELFFile(f)
        symtab = elffile.get_section_by_name(".symtab")
        if symtab is None:
            raise QemuInsnsError(f"{elf}: no symbol table (stripped?); the markers cannot be found")
        # On Arm, bit 0 of a function symbol marks Thumb code; the instruction itself is at the even address.
        thumb_bit = 1 if elffile["e_machine"] == "EM_ARM" else 0
        addrs = []
        for name in names:
            syms = [s for s in symtab.get_symbol_by_name(name) or [] if s["st_info"]["type"] == "STT_FUNC"]
            if not syms:
                raise QemuInsnsError(f"{elf}: no function '{name}'. HINT: define it __attribute__((noinline)) "
                                     f"with an `__asm__ volatile(\"\")` body so it is not optimised away")
            addrs.append(syms[0]["st_value"] & ~thumb_bit)
    return tuple(addrs)


def count_instructions(run_argv: list[str], plugin: Path, start: int, stop: int,
                       timeout: float) -> tuple[int, int, str]:
    """Run `run_argv` (a qemu command line) with the plugin; return (instructions in all regions, regions, the
    program's standard output)."""
    count, regions, stdout, _ = _count(run_argv, [f"start={start:#x}", f"stop={stop:#x}"], plugin, timeout)
    return count, regions, stdout


def count_between_marks(run_argv: list[str], plugin: Path, start: int, stop: int, mark: int,
                        timeout: float) -> tuple[int, list[int], str]:
    """Like count_instructions for a program with one region, also split at each entry of the function at
    `mark`: (the region's instructions, the instructions of each piece in order, stdout). The pieces sum to the
    region's count exactly: before the first mark, between marks, and after the last."""
    count, regions, stdout, stderr = _count(run_argv, [f"start={start:#x}", f"stop={stop:#x}", f"mark={mark:#x}"],
                                            plugin, timeout)
    found = _MARKS.findall(stderr)
    if regions != 1 or not found:
        raise QemuInsnsError(f"expected one measured region with marks, the plugin saw {regions} regions"
                             + ("" if found else " and no 'crtforge-marks' line (more than 4096 marks?)"))
    samples = [int(x) for x in found[-1].split()]
    pieces = [b - a for a, b in zip(samples, samples[1:])]
    assert sum(pieces) == count, (pieces, count)
    return count, pieces, stdout


def _count(run_argv: list[str], options: list[str], plugin: Path, timeout: float) -> tuple[int, int, str, str]:
    """The plugin's run with `options`: (instructions in all regions, regions, stdout, stderr).

    qemu 7.2's qemu_plugin_outs writes to qemu's log, which is silent unless the "plugin" log item is on,
    so `-d plugin` is added (merged into an existing `-d`): the log then goes to stderr (no -D given).
    """
    argv = list(run_argv)
    if "-d" in argv:
        i = argv.index("-d") + 1
        argv[i] = f"{argv[i]},plugin"
        log = []
    else:
        log = ["-d", "plugin"]
    argv[1:1] = [*log, "-plugin", ",".join([str(plugin), *options])]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise QemuInsnsError(f"timed out after {timeout} s: {' '.join(argv)}") from e
    matches = _RESULT.findall(proc.stderr)
    if proc.returncode != 0 or not matches:
        what = f"exit {proc.returncode}" if proc.returncode != 0 else "no 'crtforge-insns' line from the plugin"
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise QemuInsnsError(f"counting instructions failed ({what}): {' '.join(argv)}\n{tail}")
    count, regions = matches[-1]
    return int(count), int(regions), proc.stdout, proc.stderr
