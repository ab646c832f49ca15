"""The results table: one row per (model, target) from each pair's test.json, sizes.json and classification.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import fsutil
from tasks.layout import PairFiles

# Sizes in bytes from the linked program's ELF (flash = text + rodata + data, RAM = data + bss; the arena is
# part of bss, the stack is reserved apart on bare-metal boards) and, for the model alone, from its library.
COLUMNS = ("target", "model", "passed", "max abs error", "max rel error", "reference", "flash B", "RAM B",
           "arena B", "stack B", "model flash B", "registry", "ops")


def ops_cell(ops: dict[str, Any] | None) -> str:
    """How the calls compute: 'int8:7' (crtforge's integer kernels), 'float:2' (TVM kernels on float tensors),
    'int:1' (TVM kernels on integer tensors), 'ext:1' (other external functions)."""
    if not ops:
        return ""
    parts = [("int8", sum(ops["integer"].values())), ("float", len(ops["tvm_float"])),
             ("int", len(ops["tvm_integer"])), ("ext", len(ops["other"]))]
    return " ".join(f"{k}:{n}" for k, n in parts if n)


def row(target: str, model: str, test: dict[str, Any] | None, sizes: dict[str, Any] | None,
        classification: dict[str, Any] | None, plan: dict[str, Any] | None = None) -> list[str]:
    if test is None or sizes is None:
        return [target, model, "not run"] + [""] * (len(COLUMNS) - 3)
    fmt = lambda x: "n/a" if x is None else f"{x:.2e}"  # noqa: E731
    counts = classification["counts"] if classification else {}
    return [target, model, "yes" if test["passed"] else "NO", fmt(test["max_abs_error"]),
            fmt(test["max_rel_error"]), test["reference"], str(sizes["program"]["flash"]),
            str(sizes["program"]["ram"]), str(sizes["arena_bytes"]),
            "n/a" if sizes["stack_bytes"] is None else str(sizes["stack_bytes"]), str(sizes["library"]["flash"]),
            " ".join(f"{k}:{v}" for k, v in counts.items()), ops_cell(plan.get("ops") if plan else None)]


def table(rows: list[list[str]]) -> str:
    """A Markdown table, columns padded so it also reads in a terminal."""
    widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(list(COLUMNS)), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *[line(r) for r in rows]]) + "\n"


def mismatch_lines(target: str, model: str, test: dict[str, Any]) -> list[str]:
    """What failed in a pair's comparison: per output, how many elements, and the worst ones."""
    lines = []
    for name, out in test["outputs"].items():
        if out["passed"]:
            continue
        if "problem" in out:
            lines.append(f"{target}/{model}: output '{name}': {out['problem']}")
            continue
        worst = ", ".join(f"[{', '.join(map(str, w['index']))}] {w['actual']:.6g} (expected {w['expected']:.6g})"
                          for w in out["worst"])
        tolerance = (f"atol {out['atol']:g} (integer output: compared exactly)" if out.get("exact")
                     else f"rtol {test['rtol']:g}, atol {test['atol']:g}")
        lines.append(f"{target}/{model}: output '{name}': {out['mismatched']} of {out['elements']} elements outside "
                     f"{tolerance}; worst: {worst}")
    return lines


@dataclass(frozen=True)
class ResultFiles:
    """The files of one row: a pair's, or one model of a firmware (its test.json, and the firmware's sizes)."""
    target: str
    model: str  # as the row names it: "sine", or "kws/sine" for model sine in firmware kws
    test_json: Path
    sizes_json: Path
    classification_json: Path
    plan_json: Path

    @staticmethod
    def of_pair(target: str, model: str, files: PairFiles) -> "ResultFiles":
        return ResultFiles(target, model, files.test_json, files.sizes_json, files.classification_json,
                           files.plan_json)


def write_report(entries: list[ResultFiles], out_md: Path) -> tuple[str, list[str]]:
    """Table of the rows' files; returns it and a line per failure (none: all passed)."""
    read = lambda path: fsutil.read_json(path) if path.exists() else None  # noqa: E731
    rows, failures = [], []
    for e in entries:
        test = read(e.test_json)
        rows.append(row(e.target, e.model, test, read(e.sizes_json), read(e.classification_json), read(e.plan_json)))
        if test is None:
            failures.append(f"{e.target}/{e.model}: not run")
        elif not test["passed"]:
            failures.extend(mismatch_lines(e.target, e.model, test))
    text = table(rows)
    fsutil.write_text(out_md, text)
    return text, failures
