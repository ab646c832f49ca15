"""End to end through `doit`: build, test, incremental rebuilds, and bad input stopping with one clear line."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from conftest import CONV2D, CONVT, SINE, host_target, run_doit
from tasks import fsutil

PAIR_FILES = ("plan.json", "classification.json", "executor.c", "program.elf", "outputs.npz", "test.json",
              "sizes.json")
MODEL_FILES = ("import.json", "inputs.npz", "reference.npz", "reference.json")


BACKENDS = {"host": "c", "host-llvm": "llvm"}


def pipeline_text(conv_dir, llvm_extra: str = "") -> str:
    """Three models on the host with either backend. ConvTranspose2d needs kernel workspace."""
    return (f'[models.sine]\nsource = "{SINE}"\n'
            f'[models.conv2d]\nsource = "{conv_dir}/model.onnx"\nexpected = "{conv_dir}/test_data_set_0"\n'
            f'[models.convtranspose2d]\nsource = "{CONVT}/model.onnx"\nexpected = "{CONVT}/test_data_set_0"\n'
            + host_target("host", 'budget = {flash = "1M", ram = 65536}')
            + host_target("host-llvm", llvm_extra).replace('"c"', '"llvm"'))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A pipeline with two models on two host targets, built and tested once."""
    root = tmp_path_factory.mktemp("e2e")
    shutil.copytree(CONV2D.parent, root / "conv2d")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(pipeline_text(root / "conv2d"))
    build = run_doit(pipeline, "build")
    assert build.returncode == 0, build.stdout + build.stderr
    test = run_doit(pipeline, "test")
    assert test.returncode == 0, test.stdout + test.stderr
    return root, pipeline, test


def test_every_pair_passes_and_the_table_says_so(project):
    root, _, test = project
    rows = [line for line in test.stdout.splitlines() if line.startswith("| host")]
    assert len(rows) == 6 and all("| yes " in r for r in rows)
    assert (root / "out" / "results.md").read_text().count("| yes ") == 6


def test_a_budget_is_checked_at_link_and_its_headroom_recorded(project):
    for model in ("sine", "conv2d", "convtranspose2d"):
        sizes = fsutil.read_json(project[0] / "out" / "host" / model / "sizes.json")
        flash, ram = sizes["program"]["flash"], sizes["program"]["ram"]
        assert sizes["budget"] == {"flash": {"limit": 1048576, "used": flash, "headroom": 1048576 - flash},
                                   "ram": {"limit": 65536, "used": ram, "headroom": 65536 - ram}}
    assert fsutil.read_json(project[0] / "out" / "host-llvm" / "sine" / "sizes.json")["budget"] == {}


MODELS = ["sine", "conv2d", "convtranspose2d"]


@pytest.mark.parametrize("target", sorted(BACKENDS))
@pytest.mark.parametrize("model", MODELS)
def test_contract_files(project, target, model):
    d = project[0] / "out" / target / model
    generated = ("kernels.c", "metadata.c") if BACKENDS[target] == "c" else ("kernels.o", "metadata.ll", "metadata.o")
    for name in PAIR_FILES + generated + (f"{model}.h", f"lib{model}.a"):
        assert (d / name).is_file(), name
    for name in MODEL_FILES:  # once per model, beside the targets
        assert (project[0] / "out" / "_models" / model / name).is_file(), name
    assert not (d / "import.json").exists()
    result = fsutil.read_json(d / "test.json")
    assert result["passed"] is True
    assert {"passed", "max_abs_error", "max_rel_error", "reference"} <= set(result)
    assert result["max_abs_error"] <= 1e-5
    if BACKENDS[target] == "c":
        metadata = (d / "metadata.c").read_text()
        assert "const TVMModule* TVMSystemLibEntryPoint(void)" in metadata
        assert f"extern int32_t __tvm_ffi_{model}_" in metadata
    else:
        metadata = (d / "metadata.ll").read_text()
        assert "define ptr @TVMSystemLibEntryPoint()" in metadata
        assert f"declare i32 @__tvm_ffi_{model}_" in metadata
    executor = (d / "executor.c").read_text()
    if fsutil.read_json(d / "plan.json")["arena_bytes"]:
        assert f"static uint8_t {model}_arena[{model.upper()}_ARENA_BYTES]" in executor
    else:  # every tensor is the input, a weight or computed in the output buffer
        assert "No intermediate tensors: no arena." in executor and f"{model}_arena" not in executor
    assert "malloc" not in executor and "extern const float" in executor  # the weights: linked data (weights.S)
    # Each call names the source op it computes: the ONNX files' nodes have no names, so their types and indices.
    source = {"sine": "FULLY_CONNECTED (operator 0)", "conv2d": "Conv (node 0)", "convtranspose2d": "ConvTranspose (node 0)"}
    assert f"/* call 0, from {source[model]} */" in executor
    assert '.incbin "weights.bin", 0, ' in (d / "weights.S").read_text()
    assert f"int32_t {model}_run(const {model}_inputs_t* inputs, {model}_outputs_t* outputs)" in (
        d / f"{model}.h").read_text()
    assert "crtforge-registry" in (d / "run.log").read_text()


def test_kernel_workspace_comes_from_the_arena(project):
    d = project[0] / "out" / "host" / "convtranspose2d"
    assert "crtforge_workspace_init(&convtranspose2d_arena[" in (d / "executor.c").read_text()
    assert fsutil.read_json(d / "test.json")["passed"] is True


@pytest.mark.parametrize("model", MODELS)
def test_both_backends_give_the_same_outputs(project, model):
    out = project[0] / "out"
    c = fsutil.load_npz(out / "host" / model / "outputs.npz")
    llvm = fsutil.load_npz(out / "host-llvm" / model / "outputs.npz")
    assert c.keys() == llvm.keys()
    for name in c:
        np.testing.assert_allclose(llvm[name], c[name], rtol=1e-5, atol=1e-6)


def test_outputs_match_the_onnx_expected_data(project):
    out = fsutil.load_npz(project[0] / "out" / "host" / "conv2d" / "outputs.npz")["output_0"]
    expected = onnx.numpy_helper.to_array(onnx.load_tensor(str(project[0] / "conv2d" / "test_data_set_0" /
                                                               "output_0.pb")))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_second_build_runs_nothing(project):
    again = run_doit(project[1], "build")
    assert again.returncode == 0
    assert again.executed() == []
    assert "relax:host/sine" in again.skipped()


def _small_project(tmp_path, text: str):
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(text)
    built = run_doit(pipeline, "build")
    assert built.returncode == 0, built.stdout + built.stderr
    return pipeline


def test_editing_one_target_reruns_only_that_target(tmp_path):
    sine = f'[models.sine]\nsource = "{SINE}"\n'
    llvm = host_target("host-llvm").replace('"c"', '"llvm"')
    pipeline = _small_project(tmp_path, sine + host_target("host") + llvm)
    pipeline.write_text(sine + host_target("host") + llvm.replace('runner = "native"\n',
                                                                  'runner = "native"\ntvm = {opt-level = 2}\n'))
    rebuilt = run_doit(pipeline, "build")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    executed = rebuilt.executed()
    assert "relax:host-llvm/sine" in executed  # later stages rerun only where relax's outputs changed
    assert all(t.endswith(":host-llvm/sine") for t in executed), executed


def test_changing_a_model_file_reruns_only_its_pairs(tmp_path):
    shutil.copytree(CONV2D.parent, tmp_path / "conv2d")
    pipeline = _small_project(tmp_path, f'[models.sine]\nsource = "{SINE}"\n[models.conv2d]\n'
                              f'source = "conv2d/model.onnx"\n' + host_target("host"))
    model_path = tmp_path / "conv2d" / "model.onnx"
    model = onnx.load(str(model_path))
    model.doc_string = "edited"
    onnx.save(model, str(model_path))
    rebuilt = run_doit(pipeline, "build")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    executed = rebuilt.executed()
    assert {"import:conv2d", "reference:conv2d", "relax:host/conv2d", "codegen:host/conv2d"} <= set(executed)
    assert all("conv2d" in t for t in executed), executed


BAD_PIPELINES = {
    "missing model file": ('[models.m]\nsource = "missing.onnx"\n' + host_target(), "models.m.source",
                           "model file 'missing.onnx' not found"),
    "TOML syntax error": (f'[models.m]\nsource = "{SINE}"\n[targets.host\n', "pipeline.toml",
                          "TOML syntax error"),
    "unknown key": (f'[models.m]\nsource = "{SINE}"\nsorce = "x"\n' + host_target(), "models.m.sorce",
                    "did you mean 'source'?"),
    "unknown toolchain": (f'[models.m]\nsource = "{SINE}"\n' + host_target().replace("host-gcc", "avr-gcc"),
                          "targets.host.toolchain", "unknown toolchain 'avr-gcc'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_bad_pipeline_stops_with_one_clear_line(write_pipeline, tmp_path, case):
    text, key, message = BAD_PIPELINES[case]
    result = run_doit(write_pipeline(text), "build")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pipeline.toml" in lines[0] and key in lines[0] and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_failing_stage_leaves_nothing_trusted(write_pipeline, tmp_path):
    bad = write_pipeline(f'[models.m]\nsource = "{SINE}"\n' + host_target(extra='tvm = {mattr = ["+neon"]}'))
    failed = run_doit(bad, "build")
    assert failed.returncode != 0
    assert "targets.host.tvm: TVM rejects the target" in failed.stdout + failed.stderr
    pair = tmp_path / "out" / "host" / "m"
    assert not (pair / "kernels.c").exists() and not (pair / "plan.json").exists()
    assert not any(p.name.startswith(".") and ".tmp" in p.name for p in tmp_path.rglob("*"))
    # fixed, the same pipeline builds, and only the stages that had not succeeded run
    write_pipeline(f'[models.m]\nsource = "{SINE}"\n' + host_target())
    fixed = run_doit(bad, "build")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "import:m" not in fixed.executed() and "relax:host/m" in fixed.executed()
