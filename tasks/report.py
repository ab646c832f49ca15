"""The results table: one row per (model, target) from each pair's test.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import fsutil

# Sizes in bytes from the linked program's ELF (flash = text + rodata + data, RAM = data + bss; the arena is
# part of bss, the stack is reserved apart on bare-metal boards) and, for the model alone, from its library.
COLUMNS = ("target", "model", "passed", "max abs error", "max rel error", "reference", "flash B", "RAM B",
           "arena B", "stack B", "model flash B", "registry")


def row(target: str, model: str, test: dict[str, Any] | None, classification: dict[str, Any] | None) -> list[str]:
    if test is None:
        return [target, model, "not run"] + [""] * (len(COLUMNS) - 3)
    sizes = test["sizes"]
    fmt = lambda x: "n/a" if x is None else f"{x:.2e}"  # noqa: E731
    counts = classification["counts"] if classification else {}
    return [target, model, "yes" if test["passed"] else "NO", fmt(test["max_abs_error"]),
            fmt(test["max_rel_error"]), test["reference"], str(sizes["program"]["flash"]),
            str(sizes["program"]["ram"]), str(sizes["arena_bytes"]),
            "n/a" if sizes["stack_bytes"] is None else str(sizes["stack_bytes"]), str(sizes["library"]["flash"]),
            " ".join(f"{k}:{v}" for k, v in counts.items())]


def table(rows: list[list[str]]) -> str:
    """A Markdown table, columns padded so it also reads in a terminal."""
    widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(list(COLUMNS)), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *[line(r) for r in rows]]) + "\n"


def write_report(pairs: list[tuple[str, str, Path]], out_md: Path) -> tuple[str, bool]:
    """Table for `pairs` (target, model, pair directory); returns it and whether every pair passed."""
    rows, all_passed = [], True
    for target, model, d in pairs:
        test = fsutil.read_json(d / "test.json") if (d / "test.json").exists() else None
        cls = fsutil.read_json(d / "classification.json") if (d / "classification.json").exists() else None
        rows.append(row(target, model, test, cls))
        all_passed &= bool(test and test["passed"])
    text = table(rows)
    fsutil.write_text(out_md, text)
    return text, all_passed
