"""Inputs and reference outputs: from files when given, else seeded; the reference independent of TVM by default."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import CONV2D, CONV2D_DATA, SINE
from tasks import fsutil
from tasks.config import ModelConfig
from tasks.frontend.importer import load_relax, run_import, signature
from tasks.frontend.reference import ReferenceError, make_inputs, reference_model, seeded_inputs
from tasks.layout import ModelFiles


@pytest.fixture(scope="module")
def sine_sig():
    return signature(load_relax(SINE), SINE)


def test_seeded_inputs_are_deterministic_and_per_model(sine_sig):
    a = seeded_inputs("sine", sine_sig)["serving_default_dense_input_0"]
    assert a.dtype == np.float32 and a.shape == (1, 1)
    assert np.array_equal(a, seeded_inputs("sine", sine_sig)["serving_default_dense_input_0"])
    assert not np.array_equal(a, seeded_inputs("other", sine_sig)["serving_default_dense_input_0"])


def test_inputs_npz_by_model_name(sine_sig, tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, **{"serving_default_dense_input:0": np.full((1, 1), 0.5, np.float32)})
    assert make_inputs("sine", sine_sig, path, None)["serving_default_dense_input_0"][0, 0] == 0.5


@pytest.mark.parametrize("array, message", [(np.zeros((2, 2), np.float32), "has shape (2, 2), the model wants (1, 1)"),
                                            (np.zeros((1, 1), np.float64), "is float64, the model wants float32")])
def test_inputs_that_do_not_fit(sine_sig, tmp_path, array, message):
    path = tmp_path / "in.npz"
    np.savez(path, **{"0": array})
    with pytest.raises(ReferenceError, match=re.escape(message)):
        make_inputs("sine", sine_sig, path, None)


def test_missing_input_lists_the_keys(sine_sig, tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, wrong=np.zeros((1, 1), np.float32))
    with pytest.raises(ReferenceError, match="no input 'serving_default_dense_input:0'.*found wrong"):
        make_inputs("sine", sine_sig, path, None)


def _model(source, inputs=None, expected=None, reference="auto") -> ModelConfig:
    return ModelConfig(name="m", prefix="m", source=source, inputs=inputs, expected=expected, rtol=1e-4, atol=1e-5,
                       reference=reference)


def _reference(tmp_path, model: ModelConfig) -> tuple[str, ModelFiles]:
    files = ModelFiles(tmp_path / "m")
    run_import(model.source, files.import_json)
    return reference_model(model, files), files


def test_tflite_reference_is_tflms_interpreter_and_tvm_agrees(tmp_path):
    """TFLM's sine model approximates sin(x) on [0, 2π]; TVM's VM, asked for, gives the same numbers."""
    x = np.array([[1.0]], np.float32)
    np.savez(tmp_path / "in.npz", **{"0": x})
    kind, files = _reference(tmp_path, _model(SINE, inputs=tmp_path / "in.npz"))
    tflm = fsutil.load_npz(files.reference_npz)["output_0"]
    assert kind == "tflm" and fsutil.read_json(files.reference_json)["reference"] == "tflm"
    assert abs(float(tflm[0, 0]) - np.sin(1.0)) < 0.1
    kind, files = _reference(tmp_path, _model(SINE, inputs=tmp_path / "in.npz", reference="tvm"))
    assert kind == "tvm"
    np.testing.assert_allclose(fsutil.load_npz(files.reference_npz)["output_0"], tflm, rtol=1e-5, atol=1e-6)


def _pb(path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def test_onnx_reference_is_onnxruntime(tmp_path):
    """Conv2d without its expected outputs: onnxruntime on the test's own inputs gives the expected outputs."""
    np.savez(tmp_path / "in.npz", **{"0": _pb(CONV2D_DATA / "input_0.pb")})
    kind, files = _reference(tmp_path, _model(CONV2D, inputs=tmp_path / "in.npz"))
    assert kind == "onnxruntime"
    np.testing.assert_allclose(fsutil.load_npz(files.reference_npz)["output_0"], _pb(CONV2D_DATA / "output_0.pb"),
                               rtol=1e-5, atol=1e-6)


def test_onnx_test_data_set_gives_inputs_and_expected(tmp_path):
    kind, files = _reference(tmp_path, _model(CONV2D, expected=CONV2D_DATA))
    assert kind == "expected (test_data_set_0)"
    assert fsutil.load_npz(files.inputs_npz)["input_0"].shape == (2, 3, 7, 5)
    assert fsutil.load_npz(files.reference_npz)["output_0"].shape == (2, 4, 5, 4)


@pytest.mark.parametrize("what", ["inputs", "expected"])
def test_a_file_that_is_not_npz_is_named(tmp_path, what):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip archive")
    model = _model(SINE, **{what: bad})
    with pytest.raises(ReferenceError, match=rf"bad.npz: {what} is not a NumPy .npz archive .*HINT: write it with "
                                             "numpy.savez"):
        _reference(tmp_path, model)
