"""Per model: the inputs every target runs with, and the outputs they are compared against.

Inputs come from `inputs` (an .npz), from an ONNX test_data_set directory given as `expected`, or
are drawn from a generator seeded by the model name. The reference is `expected` when given, else an
implementation independent of TVM, so that a bug in TVM's lowering is not on both sides of the comparison:
onnxruntime for ONNX models, TFLM's interpreter (tflite-micro package) for TFLite models. TVM's own Relax VM
is a second opinion (`reference = "tvm"`).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from tasks import fsutil
from tasks.config import REFERENCE_FORMATS, ModelConfig
from tasks.frontend.importer import ModelSignature, TensorSpec, load_relax, read_signature
from tasks.layout import ModelFiles
from tasks.errors import CrtforgeError


class ReferenceError(CrtforgeError):
    """Inputs or expected outputs that do not fit the model: names the file and the tensor."""


def _read_pb(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(onnx.load_tensor(str(path)))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ReferenceError(f"{path}: not an ONNX tensor file ({type(e).__name__}: {e}).") from None


def _load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        return fsutil.load_npz(path)
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise ReferenceError(f"{path}: {what} is not a NumPy .npz archive ({type(e).__name__}: {e}).",
                             hint="write it with numpy.savez, one array per tensor name") from None


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
        arrays = _load_npz(inputs, "inputs")
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
    arrays = _load_npz(expected, "expected")
    return {s.c_name: _pick(arrays, s, i, expected, "output") for i, s in enumerate(sig.outputs)}


def onnxruntime_outputs(source: Path, sig: ModelSignature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime on the CPU, one thread: the reference for ONNX models. A QDQ model runs with graph
    optimisations off, QuantizeLinear/DequantizeLinear as the model writes them: optimised, onnxruntime fuses
    them into integer kernels whose results depend on the host CPU (on AVX2 without VNNI its u8s8 dot products
    saturate: up to 10 LSB off on the bench MLP), which no target can be expected to reproduce."""
    session, feed = onnxruntime_session(str(source), sig, inputs, optimise=not _is_qdq(source))
    return {s.c_name: np.asarray(r) for s, r in zip(sig.outputs, session.run(None, feed))}


def onnxruntime_session(model: str | bytes, sig: ModelSignature, inputs: dict[str, np.ndarray], optimise: bool):
    """A single-threaded CPU session of `model` (a path or the serialised model), and its feed of `inputs`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session, {i.name: inputs[s.c_name] for i, s in zip(session.get_inputs(), sig.inputs)}


def _is_qdq(source: Path) -> bool:
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def tflm_outputs(source: Path, sig: ModelSignature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TFLM's interpreter (the tflite-micro package): the reference for TFLite models."""
    interpreter = tflm_invoked(source, sig, inputs)
    return {s.c_name: np.array(interpreter.get_output(i)).reshape(s.shape) for i, s in enumerate(sig.outputs)}


def tflm_invoked(source: Path, sig: ModelSignature, inputs: dict[str, np.ndarray], keep_all_tensors: bool = False):
    """TFLM's interpreter after one invoke on `inputs`; `keep_all_tensors`: every tensor readable (GetTensor)."""
    from tflite_micro import runtime

    config = (runtime.InterpreterConfig.kPreserveAllTensors if keep_all_tensors
              else runtime.InterpreterConfig.kAllocationRecording)
    interpreter = runtime.Interpreter.from_file(str(source), intrepreter_config=config)
    for i, s in enumerate(sig.inputs):
        interpreter.set_input(inputs[s.c_name], i)
    interpreter.invoke()
    return interpreter


def tvm_outputs(source: Path, sig: ModelSignature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return vm_outputs(load_relax(source), sig, inputs)


REFERENCE_RUNNERS = {"onnxruntime": onnxruntime_outputs, "tflm": tflm_outputs, "tvm": tvm_outputs}


def reference_kind(model: ModelConfig) -> str:
    """Which reference a model's outputs are compared with: its `expected`, else its `reference` setting, where
    "auto" is the independent runtime for the model's format."""
    if model.expected is not None:
        return f"expected ({model.expected.name})"
    if model.reference != "auto":
        return model.reference
    return format_runtime(model.source)


def format_runtime(source: Path) -> str:
    """The independent runtime for a model file's format: onnxruntime for ONNX, TFLM for TFLite."""
    return next(kind for kind, suffix in REFERENCE_FORMATS.items() if suffix == source.suffix)


def reference_model(model: ModelConfig, files: ModelFiles) -> str:
    """Write the model's inputs.npz, reference.npz and reference.json; return which reference it is."""
    sig = read_signature(files.import_json)
    arrays = make_inputs(model.name, sig, model.inputs, model.expected)
    kind = reference_kind(model)
    if model.expected is not None:
        ref = expected_outputs(sig, model.expected)
    else:
        try:
            ref = REFERENCE_RUNNERS[kind](model.source, sig, arrays)
        except Exception as e:  # each runtime raises its own types; what it said is what the user needs
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ReferenceError(f"{model.source}: the reference ({kind}) cannot run this model: {first}",
                                 hint="give the model `expected` outputs, or set reference = \"tvm\"") from None
    write_reference(files, sig, arrays, ref, kind)
    return kind


def write_reference(files: ModelFiles, sig: ModelSignature, inputs: dict[str, np.ndarray],
                    reference: dict[str, np.ndarray], kind: str) -> None:
    """inputs.npz, reference.npz (keyed by C name) and reference.json, as the pipeline's later stages read them."""
    fsutil.save_npz(files.inputs_npz, inputs)
    fsutil.save_npz(files.reference_npz, reference)
    fsutil.write_json(files.reference_json, {"reference": kind, "signature": sig.to_dict()})
