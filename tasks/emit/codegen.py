"""Stage 4, codegen: the C-runtime metadata module and the ahead-of-time executor, as C.

`Registry` is the one description of the function registry; `emit_metadata_c` is its C emitter.
The executor and header are rendered from the plan by Jinja templates in tasks/templates/.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from tasks import fsutil
from tasks.compile.classify import FFI_PREFIX, Classification, read_classification
from tasks.compile.plan import HOME_ARENA, HOME_CONST, HOME_INPUT, STORAGE_OUTPUT, Plan
from tasks.deps import TEMPLATES_DIR, versions
from tasks.frontend.importer import ModelSignature, read_signature
from tasks.naming import ModelSymbols
from tasks.pair import Pair
from tasks.errors import CrtforgeError

# dtype → (C type, DLPack type code name, bits)
_DTYPES = {
    "float32": ("float", "kDLFloat", 32), "float64": ("double", "kDLFloat", 64),
    "int8": ("int8_t", "kDLInt", 8), "int16": ("int16_t", "kDLInt", 16),
    "int32": ("int32_t", "kDLInt", 32), "int64": ("int64_t", "kDLInt", 64),
    "uint8": ("uint8_t", "kDLUInt", 8), "uint16": ("uint16_t", "kDLUInt", 16),
    "uint32": ("uint32_t", "kDLUInt", 32), "uint64": ("uint64_t", "kDLUInt", 64),
    "bool": ("uint8_t", "kDLBool", 8),
}
_VALUES_PER_LINE = 8


class CodegenError(CrtforgeError):
    """Something in the plan that the C emitter cannot express."""


@dataclass(frozen=True)
class GeneratedFrom:
    """What every generated file says about its origin (no timestamps, no absolute paths)."""
    model: str
    target: str
    source: str  # file name only
    sha256: str
    tvm_version: str
    header: str  # the model header's file name
    kind: str = "model"  # or "firmware": several models' sources, listed in `source` and `sha256`

    @staticmethod
    def of(p: Pair) -> "GeneratedFrom":
        return GeneratedFrom(model=p.model.name, target=p.target.name, source=p.model.source.name,
                             sha256=fsutil.sha256_file(p.model.source), tvm_version=versions()["apache-tvm"],
                             header=p.files.header.name)


@dataclass(frozen=True)
class RegistryEntry:
    name: str  # as looked up at run time
    symbol: str  # the C symbol it resolves to


@dataclass(frozen=True)
class Registry:
    prefix: str
    functions: tuple[RegistryEntry, ...]

    @staticmethod
    def from_classification(prefix: str, classification: Classification) -> "Registry":
        return Registry(prefix, tuple(RegistryEntry(f, f"{FFI_PREFIX}{f}")
                                      for f in classification.registry_functions))

    @property
    def count_escape(self) -> str:
        n = len(self.functions)
        if n > 0xFFFF:
            raise CodegenError(f"{n} functions do not fit the registry's uint16 count.")
        return f"\\x{n & 0xFF:02x}\\x{n >> 8:02x}"


def ctype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise CodegenError(f"tensors of dtype '{dtype}' are not supported by the C executor yet.")
    return _DTYPES[dtype][0]


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.globals["ctype"] = ctype
    return env


def comment_text(text: str) -> str:
    """Text from a model (an ONNX node's name) as it can stand in a C comment: printable ASCII, no comment end."""
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return printable.replace("*/", "*\\/")


def c_literal(value: Any, dtype: str) -> str:
    """One value as a C literal that reads back bit-exactly."""
    if dtype.startswith("float"):
        v = float(value)
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "-INFINITY"
        # Shortest text that reads back to the same float32/float64.
        text = str(np.float32(v)) if dtype == "float32" else repr(v)
        if "e" not in text and "." not in text:
            text += ".0"
        return text + ("f" if dtype == "float32" else "")
    if dtype == "bool":
        return "1" if value else "0"
    v = int(value)
    if dtype == "int64":
        return f"({v + 1}LL - 1)" if v == -(2 ** 63) else f"{v}LL"
    if dtype == "uint64":
        return f"{v}ULL"
    if dtype == "int32" and v == -(2 ** 31):
        return "(-2147483647 - 1)"
    if dtype == "uint32":
        return f"{v}u"
    return str(v)


def weight_lines(array: np.ndarray) -> list[str]:
    """The array's values, wrapped at the innermost dimension (and every 8 values)."""
    dtype = str(array.dtype)
    row = array.shape[-1] if array.ndim else 1
    flat = array.reshape(-1) if array.size else np.zeros(0, array.dtype)
    lines = []
    for start in range(0, flat.size, row or 1):
        chunk = flat[start:start + row]
        for i in range(0, len(chunk), _VALUES_PER_LINE):
            lines.append(", ".join(c_literal(x, dtype) for x in chunk[i:i + _VALUES_PER_LINE]) + ",")
    return lines


def emit_metadata_c(registry: Registry, gen: GeneratedFrom) -> str:
    return _env().get_template("metadata.c.j2").render(registry=registry, gen=gen)


def names_blob(registry: Registry) -> bytes:
    n = len(registry.functions)
    return bytes([n & 0xFF, n >> 8]) + b"".join(f.name.encode() + b"\0" for f in registry.functions)


def _llvm_string(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:02X}" for b in data)


def emit_metadata_ll(registry: Registry, gen: GeneratedFrom, target_json: dict[str, Any]) -> str:
    """The registry as textual LLVM IR for the target: TVM's LLVM supplies the data layout, triple and the
    `tvm_target` flag, so the object it compiles carries exactly the kernels' attributes (float ABI...)."""
    import tvm

    target = tvm.target.Target(target_json)
    skeleton = tvm.get_global_func("codegen.LLVMModuleCreate")(str(target), "metadata").inspect_source("ll")
    head, sep, flags = skeleton.partition("!llvm.module.flags")
    if not sep:
        raise CodegenError(f"TVM's LLVM module for {target} has no module flags: {skeleton[:200]}")
    blob = names_blob(registry)
    return _env().get_template("metadata.ll.j2").render(
        registry=registry, gen=gen, llvm_header=head.rstrip() + "\n", llvm_flags=(sep + flags).strip(),
        names_bytes=len(blob), names_blob=_llvm_string(blob))


def compile_ll(ll: Path, obj: Path) -> None:
    """Compile textual LLVM IR to an object with TVM's own LLVM (no other compiler involved)."""
    import tvm

    tmp = obj.with_name(f".{obj.name}.tmp.o")
    try:
        tvm.runtime.load_module(str(ll)).write_to_file(str(tmp))
        tmp.replace(obj)
    finally:
        tmp.unlink(missing_ok=True)


def emit_header(plan: Plan, sig: ModelSignature, prefix: str, gen: GeneratedFrom) -> str:
    sym = ModelSymbols(prefix)
    return _env().get_template("model.h.j2").render(plan=plan, sig=sig, p=prefix, P=sym.macro,
                                                    guard=sym.include_guard, gen=gen)


def weight_entry(name: str, array: np.ndarray, needed_by: str = "") -> dict[str, Any]:
    dtype = str(array.dtype)
    return {"name": name, "dtype": dtype, "shape": array.shape, "ctype": ctype(dtype), "size": max(array.size, 1),
            "array": array, "needed_by": needed_by}


WEIGHT_ALIGN = 64  # every tensor of the blob starts at a multiple of this (cache lines, SIMD loads)


def lay_out_weights(weights: list[dict[str, Any]], symbol: Any) -> bytes:
    """The weights' bytes, each tensor at an aligned offset (little-endian, as every target we build for), and
    each entry given its `symbol` (symbol(entry) names it), `offset`, `nbytes` and `sha256` for the comments."""
    blob = bytearray()
    for w in weights:
        data = np.ascontiguousarray(w["array"]).astype(w["array"].dtype.newbyteorder("<"), copy=False).tobytes()
        data = data or b"\0"  # a zero-size tensor still needs an address
        blob += b"\0" * (-len(blob) % WEIGHT_ALIGN)
        w.update(symbol=symbol(w), offset=len(blob), nbytes=len(data), sha256=hashlib.sha256(data).hexdigest()[:16])
        blob += data
    return bytes(blob)


@dataclass(frozen=True)
class Weights:
    """A pair's constants as linked data: the executor's own (named with the model's prefix) and those external
    modules name themselves, their bytes (weights.bin) and the assembler file that makes them symbols."""
    executor: list[dict[str, Any]]
    external: list[dict[str, Any]]
    blob: bytes
    asm: str


def weights_of(plan: Plan, params: dict[str, np.ndarray], classification: Classification, prefix: str,
               gen: GeneratedFrom, blob_name: str = "weights.bin") -> Weights:
    """The pair's constants laid out in one blob, and weights.S: one symbol per tensor over its slice of the blob
    (.incbin: the assembler copies the bytes, so neither it nor the compiler ever sees them as text, and build time
    and memory no longer grow with the weights), all in the model's own read-only section."""
    symbols = ModelSymbols(prefix)
    own = [weight_entry(c.name, params[c.name]) for c in plan.constants]
    external = external_constants(classification, params)
    blob = lay_out_weights([*own, *external], lambda w: w["name"] if w["needed_by"] else symbols.weight(w["name"]))
    asm = _env().get_template("weights.S.j2").render(weights=[*own, *external], blob=blob_name,
                                                      section=symbols.weights_section, gen=gen, align=WEIGHT_ALIGN)
    return Weights(own, external, blob, asm)


def external_constants(classification: Classification, params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every constant a `dso+constants` module names, with its value: emitted as a const array of that name."""
    out = []
    for v in classification.modules:
        for name in v.record.const_vars:
            if name not in params:
                raise CodegenError(f"module {v.record.path} (kind '{v.record.kind}') needs constant '{name}', "
                                   "which the build did not record")
            out.append(weight_entry(name, params[name], f"module {v.record.path} ({', '.join(v.record.functions)})"))
    return out


@dataclass(frozen=True)
class SharedArena:
    """The arena a firmware's models share (tasks/firmware.py): its symbol, and the file that defines it."""
    firmware: str
    symbol: str
    file: str


def emit_executor(plan: Plan, weights: Weights, sig: ModelSignature, prefix: str, gen: GeneratedFrom,
                  shared_arena: SharedArena | None = None) -> str:
    """executor.c: declares the weights that weights.S defines; its intermediate tensors live in the model's own
    arena, or in `shared_arena`."""
    p = prefix
    arena = shared_arena.symbol if shared_arena else ModelSymbols(prefix).arena
    shapes: list[tuple[int, ...]] = []

    def shape_index(shape: tuple[int, ...]) -> int:
        if shape not in shapes:
            shapes.append(shape)
        return shapes.index(shape)

    def output_of(t) -> int | None:
        """The model output whose caller's buffer holds `t`, if any."""
        if t.home == HOME_ARENA and plan.storages[t.index].kind == STORAGE_OUTPUT:
            return plan.storages[t.index].output
        return None

    def data_expr(t) -> str:
        if output_of(t) is not None:
            return "NULL"
        if t.home == HOME_ARENA:
            return f"&{arena}[{plan.storages[t.index].offset + t.offset}]"
        if t.home == HOME_CONST:
            return f"(void*){p}_{plan.constants[t.index].name}"
        return "NULL"

    def where(t) -> str:
        if output_of(t) is not None:
            return f"model output {output_of(t)} (the caller's buffer)"
        if t.home == HOME_ARENA:
            return f"arena +{plan.storages[t.index].offset + t.offset}"
        if t.home == HOME_CONST:
            return f"weights {plan.constants[t.index].name}"
        return f"model input {t.index}"

    # Descriptors only for tensors that calls take (outputs are copied from their data directly).
    used = {a for c in plan.calls for a in c.args}
    tensors = []
    for t in plan.tensors:
        if t.id not in used:
            continue
        ctype(t.dtype)
        _, code, bits = _DTYPES[t.dtype]
        tensors.append({"id": t.id, "name": t.name, "shape": t.shape, "dtype": t.dtype, "where": where(t),
                        "at_run_time": t.home == HOME_INPUT or output_of(t) is not None, "data": data_expr(t),
                        "dl_dtype": f"{code}, {bits}, 1", "shape_index": shape_index(t.shape)})

    def describe(tid: int) -> str:
        t = plan.tensors[tid]
        return f"t{tid} '{t.name}'"

    outputs = plan.call_outputs()
    calls = [{"kernel": c.kernel, "args": c.args, "source": comment_text(", ".join(c.source_ops)),
              "outputs": [{"id": t, "nbytes": plan.tensors[t].nbytes,
                           "itemsize": np.dtype(plan.tensors[t].dtype).itemsize} for t in outputs[i]],
              "workspace": None if c.workspace is None else plan.storages[c.workspace],
              "comment": f"{c.binding}: {c.kernel}({', '.join(describe(a) for a in c.args)})"
              + ("" if c.workspace is None else f", workspace {plan.storages[c.workspace].nbytes} B")}
             for i, c in enumerate(plan.calls)]
    # Every descriptor of a caller's buffer (an input or output, or a reshape of one) gets its pointer in _run.
    bound = []
    for t in plan.tensors:
        if t.id not in used:
            continue
        if t.home == HOME_INPUT:
            bound.append({"id": t.id, "expr": f"inputs->{sig.inputs[t.index].c_name}"})
        elif output_of(t) is not None:
            bound.append({"id": t.id, "expr": f"outputs->{sig.outputs[output_of(t)].c_name}"})
    copies = []  # outputs not computed in place: an input, weights, or a tensor already returned
    for index, (tid, spec) in enumerate(zip(plan.outputs, sig.outputs)):
        t = plan.tensors[tid]
        if output_of(t) == index:
            continue
        if t.home == HOME_INPUT:
            src = f"inputs->{sig.inputs[t.index].c_name}"
        elif output_of(t) is not None:  # one tensor returned as two outputs: computed in the first one's buffer
            src = f"outputs->{sig.outputs[output_of(t)].c_name}"
        else:
            src = data_expr(t)
        copies.append({"c_name": spec.c_name, "data": src, "nbytes": t.nbytes})
    return _env().get_template("executor.c.j2").render(
        plan=plan, p=p, P=p.upper(), gen=gen, shapes=shapes, tensors=tensors, calls=calls,
        bound=bound, copies=copies, weights=weights.executor, external_constants=weights.external,
        arena=arena, shared_arena=shared_arena, arena_section=ModelSymbols(prefix).arena_section)


def write_metadata(registry: Registry, gen: GeneratedFrom, target_json: dict[str, Any], files: Any) -> None:
    """The metadata module into `files` (a pair's or a firmware's): metadata.c for the c backend, metadata.ll
    compiled to metadata.o by TVM's LLVM for llvm."""
    if target_json["kind"] == "llvm":
        fsutil.write_text(files.metadata_ll, emit_metadata_ll(registry, gen, target_json))
        compile_ll(files.metadata_ll, files.metadata_object)
    else:
        fsutil.write_text(files.metadata_c, emit_metadata_c(registry, gen))


def codegen_pair(p: Pair) -> None:
    """Stage 4: the metadata module (metadata.c, or metadata.ll and metadata.o), executor.c, the weights (weights.bin
    and weights.S) and the model header."""
    f = p.files
    plan = Plan.from_dict(fsutil.read_json(f.plan_json))
    params = fsutil.load_npz(f.params_npz)
    sig = read_signature(p.model_files.import_json)
    classification = read_classification(f.classification_json)
    gen = GeneratedFrom.of(p)
    registry = Registry.from_classification(p.model.prefix, classification)
    missing = sorted(set(plan.kernels) - {e.name for e in registry.functions})
    if missing:
        raise CodegenError(f"kernels called by the plan but defined by no module: {', '.join(missing)}")
    write_metadata(registry, gen, p.target.tvm_target(), f)
    weights = weights_of(plan, params, classification, p.model.prefix, gen, f.weights_bin.name)
    fsutil.write_bytes(f.weights_bin, weights.blob)
    fsutil.write_text(f.weights_asm, weights.asm)
    fsutil.write_text(f.executor_c, emit_executor(plan, weights, sig, p.model.prefix, gen))
    fsutil.write_text(f.header, emit_header(plan, sig, p.model.prefix, gen))
