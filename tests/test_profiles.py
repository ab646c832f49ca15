"""Release and debug profiles: both pass; release is fused, unchecked and smaller; debug keeps every check."""

from __future__ import annotations

import pytest

from conftest import CONVT, SINE, run_doit
from tasks import fsutil

TARGETS = {"host-release": ("c", "host-gcc", "host", "release"), "host-debug": ("c", "host-gcc", "host", "debug"),
           "m4-release": ("llvm", "arm-none-eabi-gcc", "mps2-an386", "release"),
           "m4-debug": ("llvm", "arm-none-eabi-gcc", "mps2-an386", "debug")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    text = f'[models.sine]\nsource = "{SINE}"\n[models.ct]\nsource = "{CONVT}/model.onnx"\n' \
           f'expected = "{CONVT}/test_data_set_0"\n'
    for name, (backend, toolchain, board, profile) in TARGETS.items():
        text += (f'[targets.{name}]\nbackend = "{backend}"\ntoolchain = "{toolchain}"\nboard = "{board}"\n'
                 f'profile = "{profile}"\n')
    (root / "pipeline.toml").write_text(text)
    result = run_doit(root / "pipeline.toml", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return root / "out"


@pytest.mark.parametrize("model", ["sine", "ct"])
@pytest.mark.parametrize("board", ["host", "m4"])
def test_release_is_smaller_than_debug_and_both_pass(built, board, model):
    sizes = {}
    for profile in ("release", "debug"):
        pair = built / f"{board}-{profile}" / model
        assert fsutil.read_json(pair / "test.json")["passed"] is True
        sizes[profile] = fsutil.read_json(pair / "sizes.json")
    assert sizes["release"]["library"]["flash"] < sizes["debug"]["library"]["flash"]
    assert sizes["release"]["program"]["flash"] < sizes["debug"]["program"]["flash"]


def test_debug_keeps_tvms_argument_checks(built):
    debug = (built / "host-debug" / "sine" / "kernels.c").read_text()
    release = (built / "host-release" / "sine" / "kernels.c").read_text()
    assert "TVMFFIErrorSetRaisedFromCStrParts(" in debug
    assert "TVMFFIErrorSetRaisedFromCStrParts(" not in release


def test_release_fuses_ops_into_fewer_kernels(built):
    calls = {p: len(fsutil.read_json(built / f"host-{p}" / "sine" / "plan.json")["calls"]) for p in ("release", "debug")}
    assert calls["release"] < calls["debug"]
