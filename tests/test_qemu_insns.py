"""The qemu instruction counter is exact and repeatable, on a Cortex-M4 board and on aarch64 Linux.

A loop of N iterations sits between the two markers. The same binary must give the same count on
every run, and the count must be linear in N: count(2000) - count(1000) == count(3000) - count(2000),
a whole multiple of 1000 (the instructions per iteration).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ and tasks/ are imported from the repository root

from tasks.bench.qemu_insns import build_plugin, count_instructions, marker_addresses  # noqa: E402

# N is read from a volatile global so every N compiles to the same instructions, only the data differs.
PROGRAM = """
__attribute__((noinline)) void crtforge_bench_start(void) { __asm__ volatile(""); }
__attribute__((noinline)) void crtforge_bench_stop(void) { __asm__ volatile(""); }
static volatile int iterations = N;
int main(void) {
  volatile int counter = 0;
  int n = iterations;
  crtforge_bench_start();
  for (int i = 0; i < n; i++) counter++;
  crtforge_bench_stop();
  return 0;
}
"""
CORTEX_M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-O2",
                   "--specs=rdimon.specs", "-Wl,--no-warn-rwx-segments"]
MPS2_RUN = ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", "enable=on,target=native", "-kernel"]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def _build_cortex_m4(src: Path, out: Path, n: int) -> list[str]:
    from tasks.config import load_board
    from tasks.toolchain.link import linker_script
    ld = out.parent / "board.ld"
    ld.write_text(linker_script(load_board("mps2-an386")))
    subprocess.run(["arm-none-eabi-gcc", *CORTEX_M4_FLAGS, "-T", str(ld), f"-DN={n}", str(src),
                    str(REPO / "crt" / "boards" / "cortex-m" / "startup.c"), "-o", str(out)], check=True)
    return [*MPS2_RUN, str(out)]


def _build_aarch64(src: Path, out: Path, n: int) -> list[str]:
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O2", f"-DN={n}", str(src), "-o", str(out)], check=True)
    return ["qemu-aarch64", str(out)]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("gcc")
    return build_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.mark.parametrize("board, tools, build", [
    ("mps2-an386", ("arm-none-eabi-gcc", "qemu-system-arm"), _build_cortex_m4),
    ("aarch64-linux", ("aarch64-linux-gnu-gcc", "qemu-aarch64"), _build_aarch64),
])
def test_counts_are_exact_and_repeatable(board, tools, build, plugin: Path, tmp_path: Path) -> None:
    _need(*tools)
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM)
    counts = {}
    for n in (1000, 2000, 3000):
        elf = tmp_path / f"prog{n}.elf"
        run = build(src, elf, n)
        start, stop = marker_addresses(elf, "crtforge_bench_start", "crtforge_bench_stop")
        first = count_instructions(run, plugin, start, stop, timeout=20)
        second = count_instructions(run, plugin, start, stop, timeout=20)
        assert first == second, f"{board} N={n}: runs differ: {first} vs {second}"
        assert first[1] == 1, f"{board} N={n}: expected one start..stop region, got {first[1]}"
        counts[n] = first[0]
    step = counts[2000] - counts[1000]
    assert counts[3000] - counts[2000] == step, f"{board}: not linear in N: {counts}"
    assert step > 0 and step % 1000 == 0, f"{board}: {step} is not a whole number of instructions per iteration"
    print(f"{board}: counts {counts}, {step // 1000} instructions per iteration, "
          f"{counts[1000] - step} outside the loop")
