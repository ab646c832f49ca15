"""Benchmarks: instructions per inference, flash and RAM split, the arena against its lower bound, and peers
measured in the same run (onnxruntime's wall time and TFLM's instructions on the host).

Instruction counts are exact and repeatable: under qemu a TCG plugin (bench/plugin/) counts guest
instructions between the harness's two marker functions around `<prefix>_run`; on the host callgrind
counts the instructions of `<prefix>_run`. Wall time is measured only against a peer in the same run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tasks import fsutil
from tasks.bench.profile import describe_top
from tasks.errors import CrtforgeError
from tasks.config import Memory
from tasks.toolchain.link import in_ram
from tasks.frontend.importer import read_signature
from tasks.layout import ModelFiles
from tasks.pair import Pair

# Wall time: the smallest of ROUNDS medians of ITERATIONS runs, in each of PROCESSES fresh processes (or onnxruntime
# sessions), smallest of those. On this shared 2-core VM one process's figure varies by up to 60 % with where its
# memory lands and what else runs; noise only adds time, so the smallest is the figure to compare.
PROCESSES, ROUNDS, ITERATIONS, WARMUP = 5, 3, 200, 20
_STACK = re.compile(r"^crtforge-stack (\d+)$", re.M)


class BenchError(CrtforgeError):
    """A measurement that could not be taken: says which and why."""


# --- sizes -------------------------------------------------------------------------------------------------------

def _symbols(elf: Path, memory: Memory | None) -> list[tuple[str, int, str]]:
    """(name, size, kind) of every sized function or object; kind is flash or ram (see link.in_ram)."""
    from elftools.elf.elffile import ELFFile

    out = []
    with open(elf, "rb") as f:
        e = ELFFile(f)
        sections = list(e.iter_sections())
        for sym in e.get_section_by_name(".symtab").iter_symbols():
            if sym["st_size"] == 0 or sym["st_info"]["type"] not in ("STT_FUNC", "STT_OBJECT"):
                continue
            if not isinstance(sym["st_shndx"], int):
                continue
            sec = sections[sym["st_shndx"]]
            ram = in_ram(sym["st_value"], sec["sh_flags"], sec["sh_type"] == "SHT_NOBITS", memory)
            out.append((sym.name, sym["st_size"], "ram" if ram else "flash"))
    return out


def size_split(elf: Path, prefix: str, external_constants: set[str], program_sizes: dict[str, int],
               memory: Memory | None = None) -> dict[str, Any]:
    """Flash split into kernels, weights, executor and runtime, the test harness, and libc with the rest;
    RAM into the arena and the rest of data and bss. From the linked program's symbol table."""
    # TVM's constants (<prefix>_c<N>), and the int8 ops' constants in external.c (tasks/compile/int8.py)
    weights = re.compile(rf"^{re.escape(prefix)}_(c\d+|int8_\d+_\w+_(weights|bias|multiplier|shift|fast|scale))$")
    flash = dict.fromkeys(("kernels", "weights", "executor_runtime", "harness"), 0)
    arena = 0
    for name, size, where in _symbols(elf, memory):
        if name == f"{prefix}_arena":
            arena = size
        if where != "flash":
            continue
        if weights.match(name) or name in external_constants:
            flash["weights"] += size
        elif name.startswith(f"__tvm_ffi_{prefix}_") or (name.startswith(f"{prefix}_") and name.endswith("_compute_")):
            flash["kernels"] += size
        elif name.startswith((f"{prefix}_", "crtforge_", "TVM", "__TVM")) and not name.startswith("crtforge_harness"):
            flash["executor_runtime"] += size
        elif re.match(r"^(input|output)_\d+$", name) or name.startswith(("crtforge_harness", "crtforge_bench")) \
                or name == "main":
            flash["harness"] += size
    flash["libc_and_rest"] = program_sizes["flash"] - sum(flash.values())
    return {"flash": {"total": program_sizes["flash"], **flash},
            "ram": {"total": program_sizes["ram"], "arena": arena, "data_bss_rest": program_sizes["ram"] - arena}}


# --- instructions per inference --------------------------------------------------------------------------------

def callgrind_instructions(argv: list[str], function: str, out_file: Path, timeout: float = 600) -> int:
    """Instructions executed inside `function` (and what it calls), counted by valgrind's callgrind."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", f"--toggle-collect={function}", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out_file.exists():
        raise BenchError(f"callgrind failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-1500:]}")
    m = re.search(r"^totals: (\d+)", out_file.read_text(), re.M)
    out_file.unlink()
    if m is None or int(m.group(1)) == 0:
        raise BenchError(f"callgrind counted nothing in {function}: {' '.join(cmd)}")
    return int(m.group(1))


def instructions(p: Pair, plugin: Path) -> tuple[int, int | None]:
    """(instructions of one inference, stack high-water in bytes or None) for the pair's test program."""
    from tasks.bench.qemu_insns import count_instructions, marker_addresses
    from tasks.execute.run import runner_argv

    argv = runner_argv(p.target.board, p.files.program)
    if p.target.runner == "native":
        return callgrind_instructions(argv, p.symbols.run, p.files.callgrind_out), None
    start, stop = marker_addresses(p.files.program, "crtforge_bench_start", "crtforge_bench_stop")
    count, regions, stdout = count_instructions(argv, plugin, start, stop, p.target.timeout)
    if regions != 1:
        raise BenchError(f"{p.files.program}: expected one measured inference, the plugin saw {regions}")
    stack = _STACK.search(stdout)
    return count, int(stack.group(1)) if stack else None


# --- wall time on the host, ours and onnxruntime's ----------------------------------------------------------------------

def host_wall_ns(p: Pair) -> float:
    """Our library's wall time per inference on the host: the timing program's smallest median over PROCESSES runs."""
    from tasks.emit.codegen import GeneratedFrom, _env
    from tasks.toolchain.link import CRT_INCLUDE, compile_c, emit_harness_data, link_program

    f = p.files
    data = emit_harness_data(read_signature(p.model_files.import_json), fsutil.load_npz(p.model_files.inputs_npz))
    source = f.timing_c
    fsutil.write_text(source, _env().get_template("timing.c.j2").render(
        p=p.model.prefix, gen=GeneratedFrom.of(p), rounds=ROUNDS, iterations=ITERATIONS, warmup=WARMUP, **data))
    obj, program = f.timing_object, f.timing_program
    compile_c(p.target, source, obj, [f.dir, CRT_INCLUDE])
    link_program(p.target, [obj], f.library, program)
    best = float("inf")
    for _ in range(PROCESSES):
        out = subprocess.run([str(program)], capture_output=True, text=True, timeout=300)
        m = re.search(r"crtforge-time-ns ([\d.]+)", out.stdout)
        if out.returncode != 0 or m is None:
            raise BenchError(f"{program.name} failed (exit {out.returncode}): {out.stderr[-500:]}")
        best = min(best, float(m.group(1)))
    return best


def onnxruntime_wall_ns(model: Path, inputs: dict[str, np.ndarray], names: list[str]) -> float:
    """onnxruntime, one thread, same inputs: the smallest of ROUNDS medians of ITERATIONS timed runs, in each of
    PROCESSES fresh sessions (as host_wall_ns runs our program in fresh processes)."""
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    best = float("inf")
    for _ in range(PROCESSES):
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        feed = dict(zip([i.name for i in session.get_inputs()], (inputs[n] for n in names)))
        for _ in range(WARMUP):
            session.run(None, feed)
        for _ in range(ROUNDS):
            times = []
            for _ in range(ITERATIONS):
                start = time.perf_counter_ns()
                session.run(None, feed)
                times.append(time.perf_counter_ns() - start)
            best = min(best, float(np.median(times)))
    return best


_TFLM_SCRIPT = """
import sys, numpy as np
from tflite_micro import runtime
data = np.load(sys.argv[2])
interpreter = runtime.Interpreter.from_file(sys.argv[1])
for i, name in enumerate(sys.argv[3:]):
    interpreter.set_input(data[name], i)
interpreter.invoke()
"""


# TFLM's RecordingMicroAllocator prints from C++ to file descriptor 2, which Python cannot redirect in-process:
# run it in a child interpreter and read its stderr.
_ARENA_SCRIPT = (
    "import sys\n"
    "from tflite_micro.python.tflite_micro import runtime\n"
    "runtime.Interpreter.from_file(sys.argv[1]).print_allocations()\n"
)
_ARENA_LINE = re.compile(r"Arena allocation total (\d+) bytes")


def tflm_arena_bytes(path: Path, timeout: float = 120.0) -> int:
    """Bytes of tensor arena TFLM's interpreter allocates for the model (RecordingMicroAllocator's total)."""
    proc = subprocess.run([sys.executable, "-c", _ARENA_SCRIPT, str(Path(path))], capture_output=True,
                          text=True, timeout=timeout, check=False)
    match = _ARENA_LINE.search(proc.stderr) or _ARENA_LINE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise BenchError(f"TFLM printed no 'Arena allocation total' line for {path} "
                         f"(exit code {proc.returncode}): {tail or '<no output>'}")
    return int(match.group(1))


def tflm_instructions(model: Path, inputs_npz: Path, names: list[str], scratch: Path) -> int:
    """Instructions of one invoke of TFLM's interpreter (the tflite-micro package), counted by callgrind."""
    script = scratch / "tflm_invoke.py"
    fsutil.write_text(script, _TFLM_SCRIPT)
    return callgrind_instructions([sys.executable, str(script), str(model), str(inputs_npz), *names],
                                  "tflite::micro::MicroInterpreter::Invoke()",
                                  # one file per process: peers are measured in parallel, each unlinks its own
                                  scratch / f"callgrind.tflm.{model.stem}.{os.getpid()}.out")


# --- one pair, and the report -----------------------------------------------------------------------------------------

def bench_pair(p: Pair, plugin: Path) -> dict[str, Any]:
    """Measure one pair; write <pair>/bench.json."""
    f = p.files
    plan = fsutil.read_json(f.plan_json)
    sizes = fsutil.read_json(f.sizes_json)
    macs = fsutil.read_json(p.model_files.import_json).get("macs", 0)
    const_vars = {c for m in fsutil.read_json(f.classification_json)["modules"] for c in m["const_vars"]}
    count, stack = instructions(p, plugin)
    profile = None
    if p.target.runner != "native":
        from tasks.bench.profile import profile_pair

        marked = profile_pair(p, plugin)
        profile = {"instructions": marked.instructions, "marked_over_plain": round(marked.instructions / count, 5),
                   "entry": marked.entry, "exit": marked.exit, "calls": len(marked.calls),
                   "top": [asdict(c) for c in marked.top()]}
    workspace = max((s["nbytes"] for s in plan["storages"] if s["kind"] == "workspace"), default=0)
    result = {
        "target": p.target.name, "model": p.model.name, "profile": p.target.profile, "backend": p.target.backend,
        "board": p.target.board.name, "toolchain": p.target.toolchain.name, "offload": list(p.target.offload),
        "tvm_target": p.target.tvm_target(),
        "tuning": fsutil.read_json(f.tune.summary_json) if p.target.tune else None, "macs": macs,
        "instructions": count,
        "program_sha256": fsutil.sha256_file(f.program),  # which build these figures are of (the report checks)
        "instructions_per_mac": round(count / macs, 3) if macs else None,
        "sizes": size_split(f.program, p.model.prefix, const_vars, sizes["program"], p.target.board.memory),
        "model_flash": sizes["library"]["flash"],
        "arena": plan["arena_bytes"], "arena_lower_bound": plan["arena_lower_bound"],
        "arena_ratio": round(plan["arena_bytes"] / plan["arena_lower_bound"], 4) if plan["arena_lower_bound"] else 1.0,
        "workspace_peak": workspace, "stack_high_water": stack, "stack_reserved": sizes["stack_bytes"],
        "stack_bound": sizes.get("stack_bound"),  # the link's worst case (tasks/toolchain/stack.py), bare-metal only
        "wall_ns": host_wall_ns(p) if p.target.runner == "native" else None,
        "kernel_profile": profile,  # per-kernel instructions of the marked program (profile.json), under qemu
    }
    fsutil.write_json(f.bench_json, result)
    return result


def peer_onnxruntime(source: Path, files: ModelFiles) -> dict[str, Any]:
    names = [t["c_name"] for t in fsutil.read_json(files.reference_json)["signature"]["inputs"]]
    return {"peer": "onnxruntime", "wall_ns": onnxruntime_wall_ns(source, fsutil.load_npz(files.inputs_npz), names)}


def peer_tflm(source: Path, files: ModelFiles, scratch: Path) -> dict[str, Any]:
    names = [t["c_name"] for t in fsutil.read_json(files.reference_json)["signature"]["inputs"]]
    return {"peer": "tflm", "instructions": tflm_instructions(source, files.inputs_npz, names, scratch),
            "arena_bytes": tflm_arena_bytes(source)}


def _fmt(x: float | int | None, spec: str = ",") -> str:
    return "n/a" if x is None else format(x, spec)


def _stack_bound(bound: dict[str, Any] | None) -> str:
    """The worst-case stack of sizes.json: bytes, "unbounded: <reason>", or n/a off bare metal."""
    if bound is None:
        return "n/a"
    return _fmt(bound["bytes"]) if bound["bytes"] is not None else f"unbounded: {bound['unbounded']}"


def fastest_host(results: list[dict[str, Any]], model: str, measure: str) -> tuple[dict[str, Any] | None,
                                                                                  dict[str, float]]:
    """The model's native release build with the smallest `measure` ("wall_ns" or "instructions"), and that
    measure for every such build by target: the peers are compared with our fastest host target."""
    native = [r for r in results if r["model"] == model and r["wall_ns"] is not None and r["profile"] == "release"]
    if not native:
        return None, {}
    return min(native, key=lambda r: r[measure]), {r["target"]: r[measure] for r in native}


def report(results: list[dict[str, Any]], peers: dict[str, dict[str, Any]], out_json: Path, out_md: Path,
           plot_dir: Path) -> list[Path]:
    """bench.json, bench.md and one plot per target; returns the plots written."""
    by_pair = {(r["target"], r["model"]): r for r in results}
    comparisons = []
    for model, peer in sorted(peers.items()):
        measure = "wall_ns" if peer["peer"] == "onnxruntime" else "instructions"
        ours, every = fastest_host(results, model, measure)
        if ours is None:
            continue
        if peer["peer"] == "onnxruntime":
            comparisons.append({"model": model, "peer": "onnxruntime", "measure": "wall ns per inference, host",
                                "target": ours["target"], "ours": ours["wall_ns"], "theirs": peer["wall_ns"],
                                "ratio": round(ours["wall_ns"] / peer["wall_ns"], 4), "all_targets": every})
        else:
            comparisons.append({"model": model, "peer": "tflm", "measure": "instructions per inference, host",
                                "target": ours["target"], "ours": ours["instructions"],
                                "theirs": peer["instructions"],
                                "ratio": round(ours["instructions"] / peer["instructions"], 4), "all_targets": every})
            comparisons.append({"model": model, "peer": "tflm", "measure": "arena bytes", "target": ours["target"],
                                "ours": ours["arena"], "theirs": peer["arena_bytes"],
                                "ratio": round(ours["arena"] / peer["arena_bytes"], 4),
                                "all_targets": {t: by_pair[(t, model)]["arena"] for t in every}})
    profiles = []
    for r in results:
        debug = by_pair.get((f"{r['target']}-debug", r["model"]))
        if r["profile"] == "release" and debug and debug["profile"] == "debug":
            profiles.append({"target": r["target"], "model": r["model"], "release_flash": r["sizes"]["flash"]["total"],
                             "debug_flash": debug["sizes"]["flash"]["total"], "release_model_flash": r["model_flash"],
                             "debug_model_flash": debug["model_flash"]})
    tuning = tuning_comparisons(results)
    fsutil.write_json(out_json, {"results": results, "peers": comparisons, "profiles": profiles, "tuning": tuning})
    fsutil.write_text(out_md, _markdown(results, comparisons, profiles, tuning))
    return [_plot(target, [r for r in results if r["target"] == target], plot_dir)
            for target in dict.fromkeys(r["target"] for r in results)]


def tuning_comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tuned pair against the same model untuned: the release build with the same backend, TVM target, board
    and toolchain, no offload and no tuning (TVM's default schedules), and what the tuning run cost."""
    same = ("model", "backend", "tvm_target", "board", "toolchain")
    rows = []
    for r in results:
        t = r.get("tuning")
        if not t:
            continue
        base = [b for b in results if all(b.get(k) == r.get(k) for k in same) and not b.get("tuning")
                and not b.get("offload") and b["profile"] == "release"]
        before = min(base, key=lambda b: b["instructions"]) if base else None
        rows.append({"target": r["target"], "model": r["model"], "macs": r["macs"], "instructions": r["instructions"],
                     "untuned_target": before["target"] if before else None,
                     "untuned_instructions": before["instructions"] if before else None,
                     "wall_ns": r["wall_ns"], "untuned_wall_ns": before["wall_ns"] if before else None,
                     "cost": t["cost"], "trials": t["trials"], "tuning_seconds": t["seconds"],
                     "records_bytes": t["records_bytes"], "source": t["source"],
                     "kernels": {k["name"]: [k["untuned"], k["best"]] for k in t["kernels"]}})
    return rows


def _tuning_lines(tuning: list[dict[str, Any]]) -> list[str]:
    lines = ["## Tuned kernels (MetaSchedule) against TVM's default schedules", "",
             "`untuned` is the same model, backend, TVM target, board and toolchain with TVM's default schedules, measured in "
             "this run. Tuning time and records are those of the committed records (`tuning/`), searched on this 2-core "
             "machine; kernel costs are what the search measured (instructions under qemu, ns on the host).", "",
             "| target | model | untuned target | instructions untuned | tuned | per MAC untuned | tuned | wall ns "
             "untuned | tuned | trials | tuning s | records B | kernels: untuned → best |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for t in tuning:
        per = (lambda n: _fmt(n / t["macs"], ".2f") if n and t["macs"] else "n/a")
        kernels = "; ".join(f"{k} {_fmt(round(a))} → {_fmt(round(b))}" for k, (a, b) in t["kernels"].items())
        lines.append(f"| {t['target']} | {t['model']} | {t['untuned_target'] or 'n/a'} | "
                     f"{_fmt(t['untuned_instructions'])} | {_fmt(t['instructions'])} | "
                     f"{per(t['untuned_instructions'])} | {per(t['instructions'])} | {_fmt(t['untuned_wall_ns'] and round(t['untuned_wall_ns']))} | "
                     f"{_fmt(t['wall_ns'] and round(t['wall_ns']))} | {t['trials']} | {t['tuning_seconds']} | "
                     f"{_fmt(t['records_bytes'])} | {kernels} |")
    return lines + [""]


# TFLM with CMSIS-NN on mps2-an386, counted by the same method (../shared/README.md): the int8 MLP 256-512-512-10,
# and a DS-CNN keyword-spotting net of the same shape as dscnn-int8 (2.90 instructions per MAC).
CMSIS_NN_CORTEX_M4 = {"mlp-int8": 807_727, "dscnn-int8": 7_700_000}


def _cmsis_nn_rows(results: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in results:
        theirs = CMSIS_NN_CORTEX_M4.get(r["model"])
        if theirs is None or r["board"] != "mps2-an386" or not r["macs"] or r["profile"] != "release":
            continue
        rows.append(f"| {r['target']} | {r['model']} | {_fmt(r['macs'])} | {_fmt(r['instructions'])} | "
                    f"{r['instructions'] / r['macs']:.2f} | {_fmt(theirs)} | {theirs / r['macs']:.2f} | "
                    f"{r['instructions'] / theirs:.3f} |")
    return rows


def _markdown(results, comparisons, profiles, tuning=()) -> str:
    lines = ["# crtforge benchmarks", "",
             "Instructions per inference are exact: guest instructions between the harness's markers under qemu "
             "(TCG plugin), or callgrind's count of `<model>_run` on the host. Sizes are bytes of the linked test "
             "program; the model's own flash is its library (kernels, metadata, executor, runtime).", ""]
    for target in dict.fromkeys(r["target"] for r in results):
        rows = [r for r in results if r["target"] == target]
        lines += [f"## {target} ({rows[0]['board']}, {rows[0]['backend']}, {rows[0]['profile']})", "",
                  "| model | MACs | instructions | per MAC | flash | kernels | weights | executor+runtime | harness "
                  "| libc+rest | RAM | arena | arena lower bound | arena/LB | workspace | stack high-water "
                  "| stack bound |",
                  "|---|" + "---:|" * 16]
        for r in rows:
            f, ram = r["sizes"]["flash"], r["sizes"]["ram"]
            lines.append(f"| {r['model']} | {_fmt(r['macs'])} | {_fmt(r['instructions'])} | "
                         f"{_fmt(r['instructions_per_mac'], '.2f')} | {_fmt(f['total'])} | {_fmt(f['kernels'])} | "
                         f"{_fmt(f['weights'])} | {_fmt(f['executor_runtime'])} | {_fmt(f['harness'])} | "
                         f"{_fmt(f['libc_and_rest'])} | {_fmt(ram['total'])} | {_fmt(r['arena'])} | "
                         f"{_fmt(r['arena_lower_bound'])} | {_fmt(r['arena_ratio'], '.3f')} | "
                         f"{_fmt(r['workspace_peak'])} | {_fmt(r['stack_high_water'])} | "
                         f"{_stack_bound(r['stack_bound'])} |")
        lines.append("")
    if tuning:
        lines += _tuning_lines(tuning)
    lines += _profile_lines(results)
    lines += ["## Peers, measured in the same run", "",
              "Our fastest host target for each model (its release builds that run natively), the others beside it.",
              "",
              "| model | peer | measure | crtforge target | crtforge | peer | crtforge / peer | other host targets |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for c in comparisons:
        others = ", ".join(f"{t} {_fmt(round(v))}" for t, v in c["all_targets"].items() if t != c["target"])
        lines.append(f"| {c['model']} | {c['peer']} | {c['measure']} | {c['target']} | {_fmt(round(c['ours']))} | "
                     f"{_fmt(round(c['theirs']))} | {c['ratio']:.3f} | {others or '-'} |")
    lines += ["", "onnxruntime runs single-threaded from Python (its per-call overhead included); TFLM is the "
              "`tflite-micro` package's interpreter, counted over one `tflite::micro::MicroInterpreter::Invoke()`; "
              "its arena is what its RecordingMicroAllocator reports for the same file.", "",
              "## int8 on Cortex-M4 against TFLM with CMSIS-NN (figures from ../shared, not measured in this run)", "",
              "| target | model | MACs | crtforge instructions | per MAC | TFLM+CMSIS-NN | per MAC | crtforge / CMSIS-NN |",
              "|---|---|---:|---:|---:|---:|---:|---:|",
              *_cmsis_nn_rows(results), "",
              "## Release and debug profiles (flash bytes)", "",
              "| target | model | release program | debug program | release model | debug model |",
              "|---|---|---:|---:|---:|---:|"]
    for p in profiles:
        lines.append(f"| {p['target']} | {p['model']} | {_fmt(p['release_flash'])} | {_fmt(p['debug_flash'])} | "
                     f"{_fmt(p['release_model_flash'])} | {_fmt(p['debug_model_flash'])} |")
    return "\n".join(lines) + "\n"


def _profile_lines(results: list[dict[str, Any]]) -> list[str]:
    """The three costliest kernel calls of each pair under qemu (profile.json has every call)."""
    rows = [r for r in results if r.get("kernel_profile")]
    if not rows:
        return []
    lines = ["## Per-kernel profile (qemu targets)", "",
             "Instructions of each kernel call, counted between marks before each call in a build of the executor "
             "with `-DCRTFORGE_PROFILE` (`<pair>/profile.json` lists every call). `marked / plain` is that build's "
             "inference against the pair's own program: what the marks cost.", "",
             "| target | model | instructions (marked) | marked / plain | calls | top 1 | top 2 | top 3 |",
             "|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        prof = r["kernel_profile"]
        top = describe_top(prof, r["model"])
        top += ["-"] * (3 - len(top))
        lines.append(f"| {r['target']} | {r['model']} | {_fmt(prof['instructions'])} | "
                     f"{prof['marked_over_plain']:.5f} | {prof['calls']} | {' | '.join(top)} |")
    return lines + [""]


def _plot(target: str, rows: list[dict[str, Any]], plot_dir: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r["model"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(models, [r["instructions"] for r in rows], color="#4472c4")
    left.set_yscale("log")
    left.set_ylabel("instructions per inference")
    left.set_title(f"{target}: instructions per inference")
    x = np.arange(len(models))
    right.bar(x - 0.2, [r["sizes"]["flash"]["total"] / 1024 for r in rows], 0.4, label="flash (program)")
    right.bar(x + 0.2, [r["sizes"]["ram"]["total"] / 1024 for r in rows], 0.4, label="RAM (data + bss)")
    right.set_xticks(x, models)
    right.set_ylabel("KiB")
    right.set_title(f"{target}: memory")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # no version stamp: reruns are identical
    plt.close(fig)
    path = plot_dir / f"{target}.png"
    fsutil.write_bytes(path, buf.getvalue())
    return path
