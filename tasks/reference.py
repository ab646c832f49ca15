"""Per model: the inputs every target runs with, and the outputs they are compared against.

Inputs come from `inputs` (an .npz), from an ONNX test_data_set directory given as `expected`, or
are drawn from a generator seeded by the model name. The reference is `expected` when given, else
TVM's own Relax VM on the host with the same inputs.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from tasks import fsutil
from tasks.importer import ModelSignature, TensorSpec, load_relax, signature


class ReferenceError(Exception):
    """Inputs or expected outputs that do not fit the model: names the file and the tensor."""


def _read_pb(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def _pick(arrays: dict[str, np.ndarray], spec: TensorSpec, index: int, file: Path, what: str) -> np.ndarray:
    for key in (spec.name, spec.c_name, str(index)):
        if key in arrays:
            arr = arrays[key]
            break
    else:
        raise ReferenceError(f"{file}: no {what} '{spec.name}' (tried keys '{spec.name}', '{spec.c_name}', "
                             f"'{index}'; found {', '.join(sorted(arrays)) or 'none'}).")
    if tuple(arr.shape) != spec.shape:
        raise ReferenceError(f"{file}: {what} '{spec.name}' has shape {tuple(arr.shape)}, the model wants "
                             f"{spec.shape}.")
    if arr.dtype != np.dtype(spec.dtype):
        raise ReferenceError(f"{file}: {what} '{spec.name}' is {arr.dtype}, the model wants {spec.dtype}.")
    return arr


def _from_test_dir(directory: Path, specs: tuple[TensorSpec, ...], prefix: str) -> dict[str, np.ndarray]:
    arrays = {str(i): _read_pb(directory / f"{prefix}_{i}.pb") for i in range(len(specs))
              if (directory / f"{prefix}_{i}.pb").exists()}
    return {s.c_name: _pick(arrays, s, i, directory, prefix) for i, s in enumerate(specs)}


def seeded_inputs(model_name: str, sig: ModelSignature) -> dict[str, np.ndarray]:
    """Deterministic inputs: the same model name gives the same arrays on every machine."""
    rng = np.random.default_rng(zlib.crc32(model_name.encode()))
    out = {}
    for spec in sig.inputs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.c_name] = rng.uniform(-1.0, 1.0, spec.shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.c_name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            out[spec.c_name] = rng.integers(max(info.min, -8), min(info.max, 8) + 1, spec.shape).astype(dtype)
    return out


def make_inputs(model_name: str, sig: ModelSignature, inputs: Path | None,
                expected: Path | None) -> dict[str, np.ndarray]:
    if inputs is not None:
        arrays = fsutil.load_npz(inputs)
        return {s.c_name: _pick(arrays, s, i, inputs, "input") for i, s in enumerate(sig.inputs)}
    if expected is not None and expected.is_dir():
        return _from_test_dir(expected, sig.inputs, "input")
    return seeded_inputs(model_name, sig)


def vm_outputs(mod, sig: ModelSignature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the Relax module `mod` in TVM's Relax VM (LLVM, host CPU)."""
    import tvm
    from tvm import relax

    executable = relax.build(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(inputs[s.c_name]) for s in sig.inputs])
    results = list(result) if len(sig.outputs) > 1 else [result]
    return {s.c_name: r.numpy() for s, r in zip(sig.outputs, results)}


def expected_outputs(sig: ModelSignature, expected: Path) -> dict[str, np.ndarray]:
    if expected.is_dir():
        return _from_test_dir(expected, sig.outputs, "output")
    arrays = fsutil.load_npz(expected)
    return {s.c_name: _pick(arrays, s, i, expected, "output") for i, s in enumerate(sig.outputs)}


def run_reference(model_name: str, source: Path, inputs: Path | None, expected: Path | None,
                  out_dir: Path) -> str:
    """Write inputs.npz and reference.npz (keyed by C name) and reference.json; return the reference's kind."""
    mod = load_relax(source)
    sig = signature(mod, source)
    arrays = make_inputs(model_name, sig, inputs, expected)
    if expected is not None:
        ref, kind = expected_outputs(sig, expected), f"expected ({expected.name})"
    else:
        ref, kind = vm_outputs(mod, sig, arrays), "tvm-relax-vm"
    write_reference(out_dir, sig, arrays, ref, kind)
    return kind


def write_reference(out_dir: Path, sig: ModelSignature, inputs: dict[str, np.ndarray],
                    reference: dict[str, np.ndarray], kind: str) -> None:
    """inputs.npz, reference.npz (keyed by C name) and reference.json, as the pipeline's later stages read them."""
    fsutil.save_npz(out_dir / "inputs.npz", inputs)
    fsutil.save_npz(out_dir / "reference.npz", reference)
    fsutil.write_json(out_dir / "reference.json", {"reference": kind, "signature": sig.to_dict()})
