"""out/report.html: one static page (no server, no script) per pipeline: per target each pair's flash and RAM
split, budget headroom, instructions per inference, the conformance summary, and which figures changed since the
previous build.

The figures of each report are kept in out/report.json. A report whose figures differ from the last one's takes
those as its baseline; one with the same figures keeps the last one's baseline, so running `doit test` twice does
not erase what the build before changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from tasks import fsutil
from tasks.bench.profile import describe_top
from tasks.deps import TEMPLATES_DIR

# Figures compared between builds; growth in any of them is what a reviewer looks for first.
FIGURES = ("flash", "ram", "instructions")
# Flash and RAM parts as bench.json splits them (tasks/bench/measure.py), in the order the bars show them.
FLASH_PARTS = ("kernels", "weights", "executor_runtime", "harness", "libc_and_rest")
RAM_PARTS = ("arena", "data_bss_rest")
LOW_HEADROOM = 0.10  # a budget with less than this share left is shown as a warning


@dataclass(frozen=True)
class ReportEntry:
    """The files behind one row: a pair's, or one model of a firmware."""
    target: str
    model: str
    test_json: Path
    sizes_json: Path
    bench_json: Path | None  # None: not measured for this kind of row
    program: Path


def _read(path: Path | None) -> Any:
    return fsutil.read_json(path) if path is not None and path.exists() else None


def row(e: ReportEntry) -> dict[str, Any]:
    """One row's figures. Instructions come from bench.json only if it measured this very program (its sha256):
    a figure of an earlier build is never shown as this one's."""
    sizes = _read(e.sizes_json)
    test = _read(e.test_json)
    bench = _read(e.bench_json)
    if bench is not None and (not e.program.exists() or bench.get("program_sha256") != fsutil.sha256_file(e.program)):
        bench = None
    r: dict[str, Any] = {"target": e.target, "model": e.model, "passed": None if test is None else test["passed"],
                         "built": sizes is not None}
    if sizes is None:
        return r
    program = sizes["program"]
    if bench is not None:
        flash = {k: bench["sizes"]["flash"][k] for k in FLASH_PARTS}
        ram = {k: bench["sizes"]["ram"][k] for k in RAM_PARTS}
    else:
        flash = {"code": program["text"], "read-only data": program["rodata"], "initial data": program["data"]}
        ram = {"arena": sizes["arena_bytes"], "other data and bss": program["ram"] - sizes["arena_bytes"]}
    r.update(flash=program["flash"], ram=program["ram"], flash_parts=flash, ram_parts=ram,
             arena=sizes["arena_bytes"], stack=sizes["stack_bytes"],
             instructions=None if bench is None else bench["instructions"],
             per_mac=None if bench is None else bench["instructions_per_mac"],
             top=describe_top(bench.get("kernel_profile") if bench else None, e.model),
             budget=[{"what": what, **b, "low": b["headroom"] < LOW_HEADROOM * b["limit"]}
                     for what, b in sorted((sizes.get("budget") or {}).items())])
    return r


def figures(rows: list[dict[str, Any]]) -> dict[str, dict[str, int | None]]:
    return {f"{r['target']}/{r['model']}": {k: r.get(k) for k in FIGURES} for r in rows if r["built"]}


def changes(current: dict[str, dict], baseline: dict[str, dict] | None) -> list[dict[str, Any]]:
    """Every figure that differs from the baseline, largest relative growth first."""
    if not baseline:
        return []
    out = []
    for key, figs in current.items():
        before = baseline.get(key)
        if before is None:
            out.append({"pair": key, "figure": "(new)", "before": None, "after": None, "ratio": None, "grew": False})
            continue
        for name in FIGURES:
            old, new = before.get(name), figs.get(name)
            if old is not None and new is not None and old != new:
                out.append({"pair": key, "figure": name, "before": old, "after": new,
                            "ratio": new / old if old else None, "grew": new > old})
    out += [{"pair": key, "figure": "(removed)", "before": None, "after": None, "ratio": None, "grew": False}
            for key in baseline if key not in current]
    return sorted(out, key=lambda c: -(c["ratio"] or 0))


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda n: "n/a" if n is None else f"{n:,}"
    env.filters["kib"] = lambda n: "n/a" if n is None else f"{n / 1024:,.1f} KiB"
    return env


def write_report_html(entries: list[ReportEntry], pipeline_name: str, conformance_json: Path, out_html: Path,
                      out_json: Path) -> dict[str, Any]:
    """Render the page and keep its figures; returns what the page summarises."""
    rows = [row(e) for e in entries]
    current = figures(rows)
    previous = _read(out_json)
    if previous is None:
        baseline = None
    elif previous["figures"] == current:
        baseline = previous.get("baseline")
    else:
        baseline = previous["figures"]
    changed = changes(current, baseline)
    targets: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        targets.setdefault(r["target"], []).append(r)
    widest = {t: max([1, *(x.get("flash", 0) for x in rs)]) for t, rs in targets.items()}
    widest_ram = {t: max([1, *(x.get("ram", 0) for x in rs)]) for t, rs in targets.items()}
    conformance = _read(conformance_json)
    summary = {"pairs": len(rows), "passed": sum(1 for r in rows if r["passed"]),
               "failed": [f"{r['target']}/{r['model']}" for r in rows if r["passed"] is False],
               "not_run": [f"{r['target']}/{r['model']}" for r in rows if r["passed"] is None],
               "grew": [c for c in changed if c.get("grew")], "changed": changed,
               "first_build": baseline is None}
    html = _env().get_template("report.html.j2").render(
        pipeline=pipeline_name, summary=summary, targets=targets, widest=widest, widest_ram=widest_ram,
        conformance=(conformance or {}).get("totals"), FLASH_PARTS=FLASH_PARTS, RAM_PARTS=RAM_PARTS)
    fsutil.write_text(out_html, html)
    fsutil.write_json(out_json, {"figures": current, "baseline": baseline})
    return summary
