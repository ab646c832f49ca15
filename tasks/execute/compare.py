"""Stage 6b, compare: the program's outputs against the reference, within the model's tolerances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks import fsutil
from tasks.frontend.importer import ModelSignature, read_signature
from tasks.pair import Pair

WORST_SHOWN = 5


def compare_one(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """Errors of one output; `passed` as numpy.isclose decides it, element by element. Integer outputs (an int8
    model's) are compared exactly: rtol 0 and atol rounded down to an integer, so the default atol means equal,
    and a pipeline that accepts a float fallback's rounding says `atol = 1`."""
    if actual.shape != expected.shape:
        return {"passed": False, "problem": f"shape {actual.shape} != reference {expected.shape}",
                "max_abs_error": None, "max_rel_error": None}
    exact = np.issubdtype(actual.dtype, np.integer) and np.issubdtype(expected.dtype, np.integer)
    if exact:
        rtol, atol = 0.0, float(np.floor(atol))
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    abs_err = np.abs(a - e)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_err = np.where(e != 0, abs_err / np.abs(e), np.where(abs_err == 0, 0.0, np.inf))
    close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    result: dict[str, Any] = {
        "passed": bool(close.all()),
        "max_abs_error": float(abs_err.max()) if abs_err.size else 0.0,
        "max_rel_error": float(rel_err.max()) if rel_err.size else 0.0,
        "mismatched": int((~close).sum()), "elements": int(close.size), "exact": bool(exact),
        "atol": atol, "rtol": rtol,
    }
    if not result["passed"]:
        flat = np.argsort(-abs_err.reshape(-1))[:WORST_SHOWN]
        result["worst"] = [{"index": [int(i) for i in np.unravel_index(k, a.shape)],
                            "actual": float(a.reshape(-1)[k]), "expected": float(e.reshape(-1)[k])} for k in flat]
    return result


def output_keys(sig: ModelSignature) -> list[str]:
    """One key per output for test.json: its name, with its index when two outputs share a name."""
    names = [s.name for s in sig.outputs]
    return [n if names.count(n) == 1 else f"{n} (output {i})" for i, n in enumerate(names)]


def compare_pair(p: Pair) -> dict[str, Any]:
    """Stage 6b: test.json from outputs.npz and the model's reference."""
    m = p.model_files
    return run_compare(read_signature(m.import_json), p.files.outputs_npz, m.reference_npz, m.reference_json,
                       p.model.rtol, p.model.atol, p.files.test_json)


def run_compare(sig: ModelSignature, outputs_npz: Path, reference_npz: Path, reference_json: Path, rtol: float,
                atol: float, out_json: Path) -> dict[str, Any]:
    outputs = fsutil.load_npz(outputs_npz)
    reference = fsutil.load_npz(reference_npz)
    per_output = {key: compare_one(outputs[s.c_name], reference[s.c_name], rtol, atol)
                  for key, s in zip(output_keys(sig), sig.outputs)}
    errors = [r for r in per_output.values() if r["max_abs_error"] is not None]
    result = {
        "passed": all(r["passed"] for r in per_output.values()),
        "max_abs_error": max((r["max_abs_error"] for r in errors), default=None),
        "max_rel_error": max((r["max_rel_error"] for r in errors), default=None),
        "reference": fsutil.read_json(reference_json)["reference"],
        "rtol": rtol, "atol": atol, "outputs": per_output,
    }
    fsutil.write_json(out_json, result)
    return result
