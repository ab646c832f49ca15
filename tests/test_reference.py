"""Inputs and reference outputs: from files when given, else seeded and TVM's Relax VM."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import CONV2D, CONV2D_DATA, SINE
from tasks import fsutil
from tasks.importer import load_relax, signature
from tasks.reference import ReferenceError, make_inputs, run_reference, seeded_inputs


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


def test_vm_reference_of_sine_is_a_sine(tmp_path):
    """TFLM's sine model approximates sin(x) on [0, 2π]: the VM reference must too."""
    x = np.array([[1.0]], np.float32)
    np.savez(tmp_path / "in.npz", **{"0": x})
    kind = run_reference("sine", SINE, tmp_path / "in.npz", None, tmp_path)
    ref = fsutil.load_npz(tmp_path / "reference.npz")["output_0"]
    assert kind == "tvm-relax-vm"
    assert abs(float(ref[0, 0]) - np.sin(1.0)) < 0.1


def test_onnx_test_data_set_gives_inputs_and_expected(tmp_path):
    kind = run_reference("conv2d", CONV2D, None, CONV2D_DATA, tmp_path)
    assert kind == "expected (test_data_set_0)"
    assert fsutil.load_npz(tmp_path / "inputs.npz")["input_0"].shape == (2, 3, 7, 5)
    assert fsutil.load_npz(tmp_path / "reference.npz")["output_0"].shape == (2, 4, 5, 4)
