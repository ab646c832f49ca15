"""pipeline.toml and toolchain validation: every bad input is one error naming the file and the key."""

from __future__ import annotations

import pytest

from conftest import CONV2D, CONV2D_DATA, SINE, host_target
from tasks.config import ConfigError, load_pipeline, load_toolchain

GOOD_MODEL = f'[models.sine]\nsource = "{SINE}"\n'


def load_error(write_pipeline, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_pipeline(text))
    return info.value


def test_valid_pipeline_loads_into_dataclasses(write_pipeline):
    p = load_pipeline(write_pipeline(
        GOOD_MODEL + f'[models.conv-2d]\nsource = "{CONV2D}"\nexpected = "{CONV2D_DATA}"\natol = 1e-3\n'
        + host_target(extra='tvm = {mcpu = "native"}\nmodels = ["conv-2d"]\n') + host_target("other")))
    assert list(p.models) == ["sine", "conv-2d"]
    assert p.models["conv-2d"].prefix == "conv_2d"
    assert p.models["conv-2d"].atol == 1e-3
    assert p.models["sine"].rtol == 1e-4
    assert p.targets["host"].tvm_target() == {"kind": "c", "mcpu": "native"}
    assert p.targets["host"].toolchain.cc == "gcc"
    assert [(m.name, t.name) for m, t in p.pairs()] == [("conv-2d", "host"), ("sine", "other"), ("conv-2d", "other")]
    assert p.out == p.file.parent / "out"


def test_paths_are_relative_to_the_pipeline_file(write_pipeline, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "sine.tflite").write_bytes(SINE.read_bytes())
    p = load_pipeline(write_pipeline('[pipeline]\nout = "build"\n[models.sine]\nsource = "m/sine.tflite"\n'
                                     + host_target()))
    assert p.models["sine"].source == tmp_path / "m" / "sine.tflite"
    assert p.out == tmp_path / "build"


def test_toml_syntax_error_names_file_and_line(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + "[targets.host\nbackend = 'c'\n")
    assert "pipeline.toml" in str(e) and "TOML syntax error" in str(e) and "line 3" in str(e)


def test_unknown_key_suggests_the_nearest(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + host_target(extra='toolchian = "x"'))
    assert e.key == "targets.host.toolchian"
    assert "did you mean 'toolchain'?" in str(e)


def test_unknown_top_level_key(write_pipeline):
    e = load_error(write_pipeline, "[modles.x]\n" + GOOD_MODEL + host_target())
    assert e.key == "modles" and "did you mean 'models'?" in str(e)


def test_wrong_type_names_the_key(write_pipeline):
    e = load_error(write_pipeline, f'[models.sine]\nsource = "{SINE}"\nrtol = "small"\n' + host_target())
    assert e.key == "models.sine.rtol" and "expected a number" in str(e)


def test_boolean_is_not_a_number(write_pipeline):
    e = load_error(write_pipeline, f'[models.sine]\nsource = "{SINE}"\natol = true\n' + host_target())
    assert e.key == "models.sine.atol" and "boolean" in str(e)


def test_missing_model_file(write_pipeline):
    e = load_error(write_pipeline, '[models.sine]\nsource = "nowhere/sine.tflite"\n' + host_target())
    assert e.key == "models.sine.source"
    assert "model file 'nowhere/sine.tflite' not found" in str(e)
    assert "pipeline.toml" in str(e)


def test_model_of_unknown_format(write_pipeline, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    e = load_error(write_pipeline, '[models.m]\nsource = "model.pt"\n' + host_target())
    assert e.key == "models.m.source" and "not an .onnx or .tflite file" in str(e)


def test_missing_required_key(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + '[targets.host]\nbackend = "c"\nrunner = "native"\n')
    assert e.key == "targets.host.toolchain" and "missing required key" in str(e)


def test_unknown_toolchain_lists_the_known_ones(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + '[targets.host]\nbackend = "c"\ntoolchain = "host-gc"\n'
                   'runner = "native"\n')
    assert e.key == "targets.host.toolchain"
    assert "unknown toolchain 'host-gc'" in str(e) and "did you mean 'host-gcc'?" in str(e)


def test_unknown_backend_and_runner(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + host_target().replace('"c"', '"cuda"'))
    assert e.key == "targets.host.backend" and "unknown backend 'cuda'" in str(e)
    e = load_error(write_pipeline, GOOD_MODEL + host_target().replace('"native"', '"jtag"'))
    assert e.key == "targets.host.runner" and "unknown runner 'jtag'" in str(e)


def test_target_lists_an_unknown_model(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + host_target(extra='models = ["sin"]'))
    assert e.key == "targets.host.models[0]" and "did you mean 'sine'?" in str(e)


def test_tvm_kind_comes_from_backend(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + host_target(extra='tvm = {kind = "llvm"}'))
    assert e.key == "targets.host.tvm.kind"


@pytest.mark.parametrize("name", ["../evil", "a/b", "9lives", "x y", ".hidden"])
def test_hostile_model_names_are_rejected(write_pipeline, name):
    e = load_error(write_pipeline, f'[models."{name}"]\nsource = "{SINE}"\n' + host_target())
    assert e.key == f"models.{name}" and "a model name is a letter" in str(e)


def test_models_whose_c_prefixes_clash(write_pipeline):
    e = load_error(write_pipeline, f'[models.a-b]\nsource = "{SINE}"\n[models.a_b]\nsource = "{SINE}"\n'
                   + host_target())
    assert e.key == "models.a_b" and "both give the C prefix 'a_b'" in str(e)


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_pipeline(tmp_path / "nope.toml")
    assert "pipeline file not found" in str(info.value)


def test_toolchain_file_is_validated(tmp_path):
    (tmp_path / "bad.toml").write_text('cc = "gcc"\nar = "ar"\ndebian_package = "gcc"\ncflags = "-O2"\n')
    with pytest.raises(ConfigError) as info:
        load_toolchain("bad", tmp_path)
    assert info.value.key == "cflags" and "expected a list" in str(info.value)


def test_shipped_host_toolchain():
    tc = load_toolchain("host-gcc")
    assert tc.cc == "gcc" and tc.debian_package == "gcc" and "-lm" in tc.libs
