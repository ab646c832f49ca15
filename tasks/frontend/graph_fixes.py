"""Graph fixes before TVM's import, where the answer is static and TVM's frontend would refuse the question.

TFLite: a Keras Flatten converts to RESHAPE(x, PACK(STRIDED_SLICE(SHAPE(x)), -1)), a shape computed at run time
from a static one. TVM 0.27's TFLite frontend refuses SHAPE (float: "Mismatched type ... relax.ShapeExpr"; int8:
"quantized TFLite operators are not supported ... 'SHAPE'"). The converter already wrote the RESHAPE's output
shape into the file, so a RESHAPE whose shape is computed and whose output shape is fully static gets that
shape as a constant tensor, and the ops that only computed it go. Each rewrite is described in a sentence that
the import stage records (import.json `rewrites`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fixed:
    data: bytes  # the model file's bytes, rewritten (the input itself when nothing was)
    rewrites: tuple[str, ...]


def fold_static_reshapes(data: bytes) -> Fixed:
    """TFLite: constant shapes for RESHAPEs whose shape input is computed but whose output shape is static."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(data, 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

    rewrites = []
    for g, sub in enumerate(model.subgraphs or []):
        produced = {t: i for i, op in enumerate(sub.operators or []) for t in _ints(op.outputs)}
        folded = False
        for i, op in enumerate(sub.operators or []):
            inputs = _ints(op.inputs)
            if op_name(op) != "RESHAPE" or len(inputs) < 2 or inputs[1] not in produced:
                continue  # no shape input, or a constant one, or a graph input (then truly dynamic)
            out = sub.tensors[op.outputs[0]]
            shape = _ints(out.shape)
            signature = _ints(out.shapeSignature) if out.shapeSignature is not None else shape
            if not shape or min(shape) < 0 or min(signature) < 0:
                continue
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(np.array(shape, "<i4").tobytes(), np.uint8)
            model.buffers.append(buffer)
            tensor = fb.TensorT()
            tensor.shape, tensor.type, tensor.buffer = [len(shape)], fb.TensorType.INT32, len(model.buffers) - 1
            tensor.name = f"crtforge_static_shape_{i}".encode()
            sub.tensors.append(tensor)
            source_op = op_name(sub.operators[produced[inputs[1]]])
            op.inputs = [inputs[0], len(sub.tensors) - 1, *inputs[2:]]
            folded = True
            where = f"subgraph {g} " if g else ""
            rewrites.append(f"RESHAPE ({where}operator #{i}): its shape, computed by {source_op} from static "
                            f"shapes, is now the constant {shape}")
        if folded:
            removed = _drop_dead_operators(sub)
            if removed:
                rewrites.append(f"removed {len(removed)} operator(s) that only computed those shapes: "
                                + ", ".join(f"#{i} {op_name(op)}" for i, op in removed))
    if not rewrites:
        return Fixed(data, ())
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return Fixed(bytes(builder.Output()), tuple(rewrites))


def _ints(vector) -> list[int]:
    """A flatbuffer vector as the object API gives it (a read-only numpy array, or None) as a list of ints."""
    return [] if vector is None else [int(v) for v in vector]


def _drop_dead_operators(sub) -> list[tuple[int, object]]:
    """Remove, until none is left, the operators no other operator and no subgraph output reads; returns them
    with their original indices."""
    ops = list(enumerate(sub.operators))
    removed = []
    while True:
        read = {t for _, op in ops for t in _ints(op.inputs) if t >= 0} | set(_ints(sub.outputs))
        dead = [(i, op) for i, op in ops if not any(t in read for t in _ints(op.outputs))]
        if not dead:
            break
        removed += dead
        ops = [(i, op) for i, op in ops if all(op is not d for _, d in dead)]
    sub.operators = [op for _, op in ops]
    return sorted(removed, key=lambda item: item[0])
