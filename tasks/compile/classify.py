"""Stage 3, classify: decide, for every runtime module the build produced, how the C runtime hosts it.

`inventory` walks a TVM runtime module tree (root and every import) into plain records; `classify`
turns the records into verdicts. Kinds `c` and `llvm` are DSO-exportable: their functions enter the
function registry. A module that also needs constants (`get_const_vars`) is `dso+constants`: its
constants are resolved at codegen time, never loaded at start-up. Anything else is refused with the
reason and what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks import fsutil
from tasks.errors import CrtforgeError
from tasks.pair import Pair

DSO_KINDS = ("c", "llvm")

MASK_BINARY_SERIALIZABLE = 1
MASK_RUNNABLE = 2
MASK_COMPILATION_EXPORTABLE = 4


class ClassifyError(CrtforgeError):
    """A module the C runtime cannot host, or clashing symbols."""


@dataclass(frozen=True)
class ModuleRecord:
    path: str  # position in the tree: "0" is the root, "0.1" its second import
    kind: str
    property_mask: int
    functions: tuple[str, ...]
    const_vars: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModuleRecord":
        return ModuleRecord(path=d["path"], kind=d["kind"], property_mask=d["property_mask"],
                            functions=tuple(d["functions"]), const_vars=tuple(d["const_vars"]))


@dataclass(frozen=True)
class Verdict:
    record: ModuleRecord
    verdict: str  # "dso", "dso+constants" or "refused"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {"path": r.path, "kind": r.kind, "property_mask": r.property_mask,
                "is_binary_serializable": bool(r.property_mask & MASK_BINARY_SERIALIZABLE),
                "is_runnable": bool(r.property_mask & MASK_RUNNABLE),
                "is_compilation_exportable": bool(r.property_mask & MASK_COMPILATION_EXPORTABLE),
                "functions": list(r.functions), "const_vars": list(r.const_vars),
                "verdict": self.verdict, "reason": self.reason}


@dataclass
class Classification:
    modules: list[Verdict] = field(default_factory=list)

    @property
    def registry_functions(self) -> list[str]:
        """Every function that enters the registry, sorted."""
        return sorted(f for v in self.modules if v.verdict.startswith("dso") for f in v.record.functions)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.modules:
            out[v.verdict] = out.get(v.verdict, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"modules": [v.to_dict() for v in self.modules], "counts": self.counts(),
                "registry": self.registry_functions}


FFI_PREFIX = "__tvm_ffi_"  # the C symbol of packed function `f` is __tvm_ffi_f


def _call_optional(module, name: str) -> tuple[str, ...]:
    """The module's own answer to `name`, or () when it has no such function."""
    try:
        func = module.get_function(name, False)
    except AttributeError:  # "Module has no function ..."
        return ()
    return tuple(str(x) for x in func())


def inventory(module, path: str = "0") -> list[ModuleRecord]:
    """Records for `module` and, depth first, every module it imports. Function names are given without
    the `__tvm_ffi_` prefix that TVM's C and LLVM modules report (a C source module lists them bare)."""
    functions = tuple(sorted(f.removeprefix(FFI_PREFIX) for f in _call_optional(module, "get_func_names")))
    record = ModuleRecord(path=path, kind=module.kind, property_mask=int(module.get_property_mask()),
                          functions=functions, const_vars=_call_optional(module, "get_const_vars"))
    records = [record]
    for i, child in enumerate(module.imports):
        records.extend(inventory(child, f"{path}.{i}"))
    return records


def _verdict(record: ModuleRecord) -> Verdict:
    exportable = bool(record.property_mask & MASK_COMPILATION_EXPORTABLE)
    if record.kind in DSO_KINDS and exportable:
        if record.const_vars:
            return Verdict(record, "dso+constants",
                           f"{len(record.const_vars)} constant(s) resolved into const arrays at codegen time")
        return Verdict(record, "dso", "functions linked into the program and listed in the registry")
    why = ("it is only binary-serialisable: the C runtime would have to parse it at start-up"
           if record.property_mask & MASK_BINARY_SERIALIZABLE else "it cannot be exported as C or an object")
    return Verdict(record, "refused",
                   f"module kind '{record.kind}' (property mask {record.property_mask}) cannot be hosted by the "
                   f"C runtime: {why}. HINT: use a target whose backend is 'c' or 'llvm' in pipeline.toml and "
                   "disable any offload that produces this module")


def classify(records: list[ModuleRecord]) -> Classification:
    """Verdicts for every record; raises ClassifyError on a refused module or a duplicate symbol."""
    result = Classification([_verdict(r) for r in records])
    refused = [v for v in result.modules if v.verdict == "refused"]
    if refused:
        raise ClassifyError("; ".join(f"module {v.record.path}: {v.reason}" for v in refused))
    owner: dict[str, ModuleRecord] = {}
    for v in result.modules:
        if not v.verdict.startswith("dso"):
            continue
        for f in v.record.functions:
            if f in owner:
                raise ClassifyError(f"duplicate symbol '{f}': defined by module {owner[f].path} "
                                    f"(kind '{owner[f].kind}') and module {v.record.path} (kind '{v.record.kind}')")
            owner[f] = v.record
    return result


def classify_pair(p: Pair) -> Classification:
    """Stage 3: classification.json from the build's modules.json."""
    result = classify([ModuleRecord.from_dict(m) for m in fsutil.read_json(p.files.modules_json)])
    fsutil.write_json(p.files.classification_json, result.to_dict())
    return result


def read_classification(path: Path) -> Classification:
    """The verdicts the classify stage stored: later stages read them, they do not classify again."""
    data = fsutil.read_json(path)
    return Classification([Verdict(ModuleRecord.from_dict(m), m["verdict"], m["reason"]) for m in data["modules"]])
