"""The build stage on real models: lowered `main` becomes a plan whose calls, tensors and arena are sound."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CONV2D, SINE
from tasks.compile import relax_build
from tasks.frontend import importer
from tasks.compile.plan import HOME_ARENA, HOME_CONST, HOME_INPUT
from test_plan import assert_valid


@pytest.fixture(scope="module")
def sine_build():
    """The debug profile, said explicitly: one kernel per op (release, the default, fuses them)."""
    return relax_build.build(SINE, "sine", {"kind": "c"}, profile="debug")


def test_sine_plan(sine_build):
    plan = sine_build.plan
    assert len(plan.inputs) == 1 and plan.tensors[plan.inputs[0]].home == HOME_INPUT
    assert plan.tensors[plan.inputs[0]].shape == (1, 1)
    assert len(plan.outputs) == 1 and plan.tensors[plan.outputs[0]].home == HOME_ARENA
    # dense 1-16-16-1: three matmuls, every kernel prefixed with the model's C prefix
    assert sum(c.kernel.startswith("sine_matmul") for c in plan.calls) == 3
    assert all(k.startswith("sine_") for k in plan.kernels)
    assert set(plan.kernels) == {c.kernel for c in plan.calls}
    assert_valid(plan.storages, plan.arena_bytes)


def test_every_tensor_fits_its_storage(sine_build):
    plan = sine_build.plan
    for t in plan.tensors:
        if t.home == HOME_ARENA:
            assert t.offset + t.nbytes <= plan.storages[t.index].nbytes


def test_weights_are_the_models(sine_build):
    import tflite

    plan, params = sine_build.plan, sine_build.params
    assert [c.name for c in plan.constants] == sorted(params, key=lambda n: int(n[1:]))
    total = sum(params[c.name].size for c in plan.constants)
    assert total == 16 + 16 + 256 + 16 + 16 + 1  # dense 1-16-16-1 weights and biases
    model = tflite.Model.GetRootAsModel(SINE.read_bytes(), 0)
    assert model.Subgraphs(0).OperatorsLength() == 3
    for t in plan.tensors:
        if t.home == HOME_CONST:
            assert params[plan.constants[t.index].name].size == int(np.prod(t.shape))


def test_kernels_source_defines_every_kernel(sine_build):
    for k in sine_build.plan.kernels:
        assert f"int32_t __tvm_ffi_{k}(" in sine_build.kernels_source


def test_conv2d_weights_are_constants():
    result = relax_build.build(CONV2D, "conv2d", {"kind": "c"})
    assert [c.shape for c in result.plan.constants] == [(4, 3, 3, 2), (1, 4, 1, 1)]  # bias reshape folded
    assert len(result.plan.inputs) == 1


def test_bad_target_option_names_the_key():
    with pytest.raises(relax_build.BuildError, match=r"pipeline.toml: targets.x.tvm: TVM rejects the target .*mattr"):
        relax_build.build(SINE, "sine", {"kind": "c", "mattr": ["+neon"]}, "pipeline.toml: targets.x.tvm")


def test_signature_names():
    sig = importer.signature(importer.load_relax(SINE), SINE)
    assert sig.inputs[0].name == "serving_default_dense_input:0"
    assert sig.inputs[0].c_name == "serving_default_dense_input_0"
    assert sig.outputs[0].shape == (1, 1)


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(importer.ModelImportError, match="not a TFLite flatbuffer"):
        importer.load_relax(bad)
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(CONV2D.read_bytes()[:100])
    with pytest.raises(importer.ModelImportError, match="trunc.onnx: TVM cannot import this model"):
        importer.load_relax(truncated)


def test_workspace_is_planned_in_the_arena_for_its_call_only():
    """ConvTranspose2d's kernel asks TVMBackendAllocWorkspace for its dilated and padded input."""
    source = CONV2D.parent.parent / "convtranspose2d" / "model.onnx"
    result = relax_build.build(source, "ct", {"kind": "c"}, profile="debug")
    [call] = [c for c in result.plan.calls if c.workspace is not None]
    ws = result.plan.storages[call.workspace]
    assert (ws.first, ws.last) == (call.step, call.step)
    assert ws.nbytes == 2560 + 3712  # 2508 and 3696 bytes, each padded to 64
    assert result.kernels_source.count("TVMBackendAllocWorkspace(") == 2
    assert_valid(result.plan.storages, result.plan.arena_bytes)
