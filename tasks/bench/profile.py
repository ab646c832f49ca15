"""Per-kernel instruction profile: where one inference's instructions go, call by call.

The pair's executor is compiled once more with -DCRTFORGE_PROFILE, which puts a call of the harness's
crtforge_profile_mark before each kernel call and after the last (crtforge/crt.h); that object, linked before the
pair's own library, makes out/<target>/<model>/profile/program.elf. Under qemu the TCG plugin samples its
instruction counter at each mark's entry (bench/plugin/crtforge_insns.c), so the pieces are exact and sum to the
profiled inference without a gap. Each mark costs the few instructions of a call and return, so the profiled
inference is a little longer than the pair's own; bench.json records both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks import fsutil
from tasks.bench.qemu_insns import QemuInsnsError, count_between_marks, marker_addresses
from tasks.pair import Pair

TOP = 3  # kernels named in bench.md


@dataclass(frozen=True)
class CallCost:
    index: int  # the plan's call number (the executor's CRTFORGE_PROFILE_MARK argument)
    kernel: str
    binding: str  # the Relax binding the call came from
    source_ops: tuple[str, ...]  # the source model's ops (ONNX nodes, TFLite operators) it computes
    instructions: int
    share: float  # of the profiled inference


@dataclass(frozen=True)
class Profile:
    target: str
    model: str
    program_sha256: str  # the profiled program
    instructions: int  # the profiled inference, marks included
    entry: int  # in the executor before its first call (argument checks, binding the caller's buffers)
    exit: int  # after the last call (copies of outputs, return)
    calls: list[CallCost]

    def top(self, n: int = TOP) -> list[CallCost]:
        return sorted(self.calls, key=lambda c: (-c.instructions, c.index))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top": [c.index for c in self.top()]}


def describe_top(kernel_profile: dict[str, Any] | None, model: str) -> list[str]:
    """The costliest calls of bench.json's `kernel_profile`, for tables: call number, kernel, source ops, share."""
    if not kernel_profile:
        return []
    prefix = model.replace("-", "_") + "_"
    return [f"#{c['index']} {c['kernel'].removeprefix(prefix)}"
            f"{' (' + ', '.join(c['source_ops']) + ')' if c['source_ops'] else ''} {100 * c['share']:.1f} %"
            for c in kernel_profile["top"]]


def build_profile_program(p: Pair) -> Path:
    """The pair's test program with its executor compiled with -DCRTFORGE_PROFILE: the marked object comes
    first on the link line, so the library's own executor is never pulled in."""
    from tasks.toolchain.link import CRT_DIR, CRT_INCLUDE, compile_c, harness_sources, link_program

    f, target = p.files, p.target
    compile_c(target, f.executor_c, f.profile_object, [f.dir, CRT_INCLUDE], defines=("CRTFORGE_PROFILE",))
    harness = [f.object_for(src, CRT_DIR) for src in harness_sources(f, target.board)]
    script = f.linker_script if target.board.kind == "bare-metal" else None
    link_program(target, [f.profile_object, *harness], f.library, f.profile_program, script)
    return f.profile_program


def profile_from_pieces(p: Pair, plan: dict[str, Any], pieces: list[int], program: Path) -> Profile:
    """The profile from the plugin's pieces: before the first mark, one per call, after the last."""
    calls = plan["calls"]
    if len(pieces) != len(calls) + 2:
        raise QemuInsnsError(f"{program}: {len(pieces) - 1} marks for {len(calls)} calls (want one more than calls)")
    total = sum(pieces)
    costs = [CallCost(i, c["kernel"], c["binding"], tuple(c["source_ops"]), n, round(n / total, 4))
             for i, (c, n) in enumerate(zip(calls, pieces[1:-1]))]
    return Profile(p.target.name, p.model.name, fsutil.sha256_file(program), total, pieces[0], pieces[-1], costs)


def profile_pair(p: Pair, plugin: Path) -> Profile:
    """Build and run the marked program under qemu; write profile.json."""
    from tasks.execute.run import runner_argv

    program = build_profile_program(p)
    start, stop, mark = marker_addresses(program, "crtforge_bench_start", "crtforge_bench_stop",
                                         "crtforge_profile_mark")
    _, pieces, _ = count_between_marks(runner_argv(p.target.board, program), plugin, start, stop, mark,
                                       p.target.timeout)
    profile = profile_from_pieces(p, fsutil.read_json(p.files.plan_json), pieces, program)
    fsutil.write_json(p.files.profile_json, profile.to_dict())
    return profile
