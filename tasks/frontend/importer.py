"""Stage 1, import: an ONNX or TFLite model file → a Relax IRModule and its signature.

TVM IR cannot be cached (tvm.ir.save_json segfaults on these modules), so later stages call
`load_relax` again; this stage checks that the model imports and records what it found.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import fsutil
from tasks.config import ModelConfig
from tasks.frontend.graph_fixes import Fixed, fold_static_reshapes
from tasks.layout import ModelFiles
from tasks.naming import unique_c_identifiers
from tasks.frontend.sources import SourceOp, SourceOps, attribute, onnx_label, tflite_label
from tasks.errors import CrtforgeError


class ModelImportError(CrtforgeError):
    """The model file cannot be imported: names the file and what TVM said."""


@dataclass(frozen=True)
class TensorSpec:
    name: str  # as the model file names it
    c_name: str  # the Relax parameter name (a C identifier)
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        import numpy as np

        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TensorSpec":
        return TensorSpec(name=d["name"], c_name=d["c_name"], shape=tuple(d["shape"]), dtype=d["dtype"])


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelSignature":
        return ModelSignature(inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                              outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]))


def _file_io_names(source: Path) -> tuple[list[str], list[str]]:
    """Input and output names as the model file has them (ONNX initializers are not inputs)."""
    if source.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(source), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        return [i.name for i in graph.input if i.name not in inits], [o.name for o in graph.output]
    model = _read_tflite(source)
    sub = model.Subgraphs(0)
    name = lambda i: sub.Tensors(i).Name().decode()  # noqa: E731
    return ([name(sub.Inputs(i)) for i in range(sub.InputsLength())],
            [name(sub.Outputs(i)) for i in range(sub.OutputsLength())])


def _tflite_bytes(source: Path) -> bytes:
    buf = source.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelImportError(f"{source}: not a TFLite flatbuffer (no 'TFL3' identifier).")
    return buf


def _read_tflite(source: Path):
    """The model file as it is (its operator indices are the ones messages name)."""
    import tflite

    return tflite.Model.GetRootAsModel(_tflite_bytes(source), 0)


def graph_fixes(source: Path) -> Fixed:
    """The model as TVM's frontend gets it: TFLite files with their static shape computations folded
    (tasks/frontend/graph_fixes.py); other files as they are."""
    if source.suffix == ".onnx":
        return Fixed(b"", ())
    return fold_static_reshapes(_tflite_bytes(source))


def load_relax(source: Path):
    """The model as a Relax IRModule with weights bound as constants, made for inference and for C (see
    `_for_inference`)."""
    return load_relax_with_sources(source)[0]


def load_relax_with_sources(source: Path) -> tuple[Any, SourceOps]:
    """load_relax, and which source op each of `main`'s bindings came from (tasks/frontend/sources.py)."""
    mod, sources = _import(source)
    return _for_inference(mod), sources


def _for_inference(mod):
    """What TVM's C codegen needs of an imported module: no training-only ops (Dropout's output is its input at
    inference; TVM keeps the op, and its C then fails -Werror=unused-but-set-variable), and `main`'s parameters
    named as C identifiers (TVM's C names variables after them: an input 'gpu_0/data_0' would not compile).
    The signature keeps the model's own names."""
    from tvm import relax
    from tvm.relax.dpl import is_op, is_tuple_get_item, rewrite_call, wildcard

    main = mod["main"]
    x = wildcard()
    main = rewrite_call(is_tuple_get_item(is_op("relax.nn.dropout")(x), 0), lambda _, m: m[x], main)
    names = [str(p.name) for p in main.params]
    c_names = unique_c_identifiers(names)
    if c_names != names:
        params = [relax.Var(c, p.ty) for c, p in zip(c_names, main.params)]
        bound = main.bind_params(dict(zip(main.params, params)))
        main = relax.Function(params, bound.body, attrs=main.attrs)
    mod["main"] = main
    return relax.transform.DeadCodeElimination()(mod)


def _import(source: Path) -> tuple[Any, SourceOps]:
    try:
        if source.suffix == ".onnx":
            import onnx

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Renaming name")
                return _from_onnx(onnx.load(str(source)))
        import tflite

        model = tflite.Model.GetRootAsModel(graph_fixes(source).data, 0)
        _check_softmax_beta(model, source)
        return _from_tflite(model)
    except ModelImportError:
        raise
    except Exception as e:  # TVM frontends raise many types; the message is what the user needs.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        unsupported = _unsupported_ops(first)
        if unsupported:
            raise ModelImportError(f"{source}: TVM cannot import this model: {_describe_nodes(source, unsupported)} "
                                   f"not supported by TVM's {source.suffix[1:].upper()} frontend. HINT: replace "
                                   "these ops in the model (or run them outside it)") from e
        raise ModelImportError(f"{source}: TVM cannot import this model: {first}") from e


def _from_onnx(model) -> tuple[Any, SourceOps]:
    """TVM's from_onnx, with its graph importer kept so that each node's outputs can be looked up after."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    # from_onnx's defaults, and its opset: the default domain's version.
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = ONNXGraphImporter(None, "float32", keep_params_in_input=False, sanitize=True)
    mod = importer.from_onnx(model.graph, opset)
    ops = [SourceOp(onnx_label(i, node), tuple(node.output), [importer._nodes.get(o) for o in node.output])
           for i, node in enumerate(model.graph.node)]
    return mod, attribute(mod["main"], ops)


def _from_tflite(model) -> tuple[Any, SourceOps]:
    """TVM's from_tflite, with an operator converter that keeps itself so that each operator's outputs can be
    looked up after."""
    from tvm.relax.frontend import tflite as relax_tflite
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter, get_tensor_name

    converters = []

    class Recording(OperatorConverter):
        def convert_op_to_relax(self):
            converters.append(self)
            super().convert_op_to_relax()

    mod = relax_tflite.from_tflite(model, op_converter=Recording)
    conv = converters[0]
    ops = []
    for index in range(conv.subgraph.OperatorsLength()):
        op = conv.subgraph.Operators(index)
        names = [get_tensor_name(conv.subgraph, t.tensor_idx) for t in conv.get_output_tensors(op)]
        ops.append(SourceOp(tflite_label(index, conv.get_op_code_str(op)), tuple(names),
                            [conv.exp_tab.get_expr(n) if conv.exp_tab.has_expr(n) else None for n in names]))
    return mod, attribute(mod["main"], ops)


def _check_softmax_beta(model, source: Path) -> None:
    """TVM 0.27's TFLite frontend drops SOFTMAX's beta (it imports softmax(x), not softmax(beta * x)): refuse a
    beta other than 1 rather than build a model that computes something else."""
    import tflite

    sub = model.Subgraphs(0)
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != tflite.BuiltinOperator.SOFTMAX:
            continue
        table = op.BuiltinOptions()
        if table is None:
            continue
        options = tflite.SoftmaxOptions()
        options.Init(table.Bytes, table.Pos)
        if options.Beta() != 1.0:
            raise ModelImportError(f"{source}: SOFTMAX (operator #{i}) has beta {options.Beta():g}; TVM's TFLite "
                                   "frontend ignores beta, so the build would compute softmax(x) instead. HINT: "
                                   "fold beta into the model (scale the SOFTMAX input, or its input's "
                                   "quantisation scale, by beta) and convert again")


_UNSUPPORTED = re.compile(r"following operators are not supported (?:for|in) frontend \w+: (.+)$")


def _unsupported_ops(message: str) -> list[str]:
    m = _UNSUPPORTED.search(message)
    return [op.strip() for op in m.group(1).split(",") if op.strip()] if m else []


def _describe_nodes(source: Path, ops: list[str]) -> str:
    """'op Gradient (node 'grad', 1 of 1)' for every unsupported op, naming the first node that uses it."""
    parts = []
    for op in ops:
        nodes = _nodes_of(source, op)
        where = f"node '{nodes[0]}', {len(nodes)} node(s) in all" if nodes else "no node found"
        parts.append(f"op {op} ({where})")
    return "; ".join(parts) + (" is" if len(parts) == 1 else " are")


def _nodes_of(source: Path, op: str) -> list[str]:
    """Names of the nodes (ONNX) or operator indices (TFLite) that use `op`."""
    if source.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(source), load_external_data=False).graph
        return [n.name or f"#{i}" for i, n in enumerate(graph.node) if n.op_type == op]
    import tflite

    model = _read_tflite(source)
    codes = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    sub = model.Subgraphs(0)
    found = []
    for i in range(sub.OperatorsLength()):
        code = model.OperatorCodes(sub.Operators(i).OpcodeIndex())
        if codes.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) == op:
            found.append(f"operator #{i}")
    return found


def _tensor_spec(name: str, c_name: str, ty, what: str, source: Path) -> TensorSpec:
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise ModelImportError(f"{source}: {what} '{name}' is not a tensor of known shape ({ty}).")
    try:
        shape = tuple(int(v) for v in ty.shape.values)
    except TypeError:
        raise ModelImportError(f"{source}: {what} '{name}' has a dynamic shape {ty.shape}; "
                               "crtforge needs static shapes.") from None
    return TensorSpec(name=name, c_name=c_name, shape=shape, dtype=str(ty.dtype))


def signature(mod, source: Path) -> ModelSignature:
    from tvm import relax

    main = mod["main"]
    in_names, out_names = _file_io_names(source)
    if len(in_names) != len(main.params):
        in_names = [p.name for p in main.params]
    try:
        c_names = unique_c_identifiers([p.name for p in main.params])
    except ValueError as e:
        raise ModelImportError(f"{source}: input names clash in C: {e}.") from None
    inputs = tuple(_tensor_spec(n, c, p.ty, "input", source)
                   for n, c, p in zip(in_names, c_names, main.params))
    ret = main.ret_ty
    out_tys = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    if len(out_names) != len(out_tys):
        out_names = [f"output_{i}" for i in range(len(out_tys))]
    outputs = tuple(_tensor_spec(n, f"output_{i}", ty, "output", source)
                    for i, (n, ty) in enumerate(zip(out_names, out_tys)))
    return ModelSignature(inputs=inputs, outputs=outputs)


def op_histogram(mod) -> dict[str, int]:
    """How often each Relax op appears in `main` before lowering."""
    from tvm import ir, relax

    counts: Counter[str] = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op):
            counts[expr.op.name] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return dict(sorted(counts.items()))


def _dims(expr) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in expr.ty.shape.values)
    except (AttributeError, TypeError):
        return None


def count_macs(mod) -> int:
    """Multiply-accumulates of one inference: matmuls and (transposed) convolutions, from the static shapes."""
    from tvm import ir, relax

    total = 0

    def visit(expr):
        nonlocal total
        if not (isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op)):
            return
        name, out = expr.op.name, _dims(expr)
        if name == "relax.matmul" and out is not None and _dims(expr.args[0]):
            total += int(np.prod(out)) * _dims(expr.args[0])[-1]
        elif name.startswith("relax.nn.conv") and _dims(expr.args[0]) and _dims(expr.args[1]) and out:
            # Each output (each input, when transposed) takes one weight slice: the weight without the axis
            # its layout names O (I when transposed), e.g. OIHW for ONNX, HWIO for TFLite.
            weight, layout = _dims(expr.args[1]), str(expr.attrs.kernel_layout)
            transposed = name.endswith("_transpose")
            per_element = int(np.prod(weight)) // weight[layout.index("I" if transposed else "O")]
            total += int(np.prod(_dims(expr.args[0]) if transposed else out)) * per_element

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return total


def read_signature(import_json: Path) -> ModelSignature:
    """The signature the import stage recorded: every later stage reads it from here, never re-imports."""
    return ModelSignature.from_dict(fsutil.read_json(import_json)["signature"])


def import_model(model: ModelConfig, files: ModelFiles) -> ModelSignature:
    """Stage 1, once per model: import.json in the model's folder."""
    return run_import(model.source, files.import_json)


def run_import(source: Path, out_json: Path) -> ModelSignature:
    """Import `source`, then write its signature, op counts and MACs to `out_json`."""
    mod = load_relax(source)
    return write_import(mod, source, out_json)


def write_import(mod, source: Path, out_json: Path) -> ModelSignature:
    sig = signature(mod, source)
    fsutil.write_json(out_json, {"source": source.name, "sha256": fsutil.sha256_file(source),
                                 "signature": sig.to_dict(), "ops": op_histogram(mod), "macs": count_macs(mod),
                                 "rewrites": list(graph_fixes(source).rewrites)})
    return sig
