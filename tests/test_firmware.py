"""Several models in one firmware: one registry, one entry point and one shared arena, both models passing on the
host and on Cortex-M4."""

from __future__ import annotations

import re
import subprocess

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from conftest import CONVT, SINE, host_target, run_doit, target
from tasks import fsutil

TARGETS = ("host", "cortex-m4")
MODELS = ("sine", "convtranspose2d")  # the transposed convolution also takes workspace from the arena


def firmware_pipeline(extra: str = "") -> str:
    return (f'[models.sine]\nsource = "{SINE}"\n'
            f'[models.convtranspose2d]\nsource = "{CONVT}/model.onnx"\nexpected = "{CONVT}/test_data_set_0"\n'
            + host_target("host")
            + target("cortex-m4", backend="llvm", toolchain="arm-none-eabi-gcc", board="mps2-an386")
            + f'[firmware.duo]\nmodels = ["sine", "convtranspose2d"]\n{extra}\n')


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("firmware")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(firmware_pipeline())
    result = run_doit(pipeline, "-n", "2", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return root / "out", pipeline, result


def symbols(elf) -> dict[str, dict]:
    with open(elf, "rb") as f:
        return {s.name: {"bind": s["st_info"]["bind"], "size": s["st_size"], "defined": s["st_shndx"] != "SHN_UNDEF"}
                for sec in ELFFile(f).iter_sections() if isinstance(sec, SymbolTableSection)
                for s in sec.iter_symbols() if s.name}


@pytest.mark.parametrize("target_name", TARGETS)
def test_both_models_pass_from_one_program(built, target_name):
    out, _, result = built
    fw = out / target_name / "_firmware" / "duo"
    summary = fsutil.read_json(fw / "test.json")
    assert summary["passed"] and sorted(summary["models"]) == sorted(MODELS)
    for model in MODELS:
        assert fsutil.read_json(fw / model / "test.json")["passed"]
        assert f"| {target_name} " in result.stdout and f"| duo/{model} " in result.stdout
    log = (fw / "run.log").read_text()
    assert log.count("crtforge-model ") == 2 and "crtforge-done" in log


@pytest.mark.parametrize("target_name", TARGETS)
def test_the_models_share_one_arena_sized_by_the_largest(built, target_name):
    out, _, _ = built
    fw = out / target_name / "_firmware" / "duo"
    arenas = {m: fsutil.read_json(out / target_name / m / "plan.json")["arena_bytes"] for m in MODELS}
    assert len(set(arenas.values())) == 2  # the sizes differ, so "the largest" means something
    sizes = fsutil.read_json(fw / "sizes.json")
    assert sizes["arena_bytes"] == max(arenas.values())
    syms = symbols(fw / "program.elf")
    assert syms["duo_arena"]["size"] == max(arenas.values())
    assert not {"sine_arena", "convtranspose2d_arena"} & set(syms)
    for model in MODELS:
        assert "extern uint8_t duo_arena[];" in (fw / model / "executor.c").read_text()
    # One arena instead of two: the firmware needs less RAM than the two programs' arenas together.
    separate = sum(fsutil.read_json(out / target_name / m / "sizes.json")["arena_bytes"] for m in MODELS)
    assert sizes["arena_bytes"] < separate


@pytest.mark.parametrize("target_name", TARGETS)
def test_one_registry_and_entry_point_for_every_kernel(built, target_name):
    out, _, _ = built
    fw = out / target_name / "_firmware" / "duo"
    tool = "nm" if target_name == "host" else "arm-none-eabi-nm"
    listing = subprocess.run([tool, "--defined-only", "-g", str(fw / "libduo.a")], capture_output=True, text=True,
                             check=True).stdout
    # Strong definitions only: TVM's kernels each carry weak float16 helpers (W), which the linker merges.
    defined = [w[2] for w in map(str.split, listing.splitlines()) if len(w) == 3 and w[1] in "TDRB"]
    assert defined.count("TVMSystemLibEntryPoint") == 1
    assert "__tvm_ffi__library_ctx" not in defined  # file-local in each model's kernels
    assert len(defined) == len(set(defined))
    count = sum(len(fsutil.read_json(out / target_name / m / "classification.json")["registry"])
                for m in MODELS)
    assert f"crtforge-registry {count}\n" in (fw / "run.log").read_text()


def test_the_stack_bound_is_the_deepest_model_run(built):
    out, _, _ = built
    fw = out / "cortex-m4" / "_firmware" / "duo"
    bound = fsutil.read_json(fw / "sizes.json")["stack_bound"]
    alone = {m: fsutil.read_json(out / "cortex-m4" / m / "sizes.json")["stack_bound"] for m in MODELS}
    deepest = max(alone.values(), key=lambda b: b["bytes"])
    assert bound == deepest  # the same kernels and runtime as each model's own program
    painted = int(re.search(r"^crtforge-stack (\d+)$", (fw / "run.log").read_text(), re.M).group(1))
    assert 0 < painted <= bound["bytes"] < 32768  # the harness paints around each model's run
    assert fsutil.read_json(out / "host" / "_firmware" / "duo" / "sizes.json")["stack_bound"] is None


def test_a_second_build_runs_nothing(built):
    _, pipeline, _ = built
    again = run_doit(pipeline, "build")
    assert again.returncode == 0 and again.executed() == [], again.stdout


def test_a_firmware_over_its_budget_is_refused(tmp_path):
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(firmware_pipeline('budget = {ram = "1K"}'))
    result = run_doit(pipeline, "firmware:host/duo")
    assert result.returncode != 0
    assert "firmware duo on target host is over its ram budget: " in result.stdout + result.stderr
    assert "the budget (firmware.duo.budget.ram) is 1,024 B" in result.stdout + result.stderr
