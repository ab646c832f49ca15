"""Placement in named memories: a board describes its other memories ([memory.regions]), a target places the
weights and the arena there (placement = {weights = "...", arena = "..."}); the linker script gets the sections,
the fits check and sizes.json count each memory, and the program runs. Cortex-M4 (mps2-an386 under qemu) with
the weights in its 16 MB PSRAM and the arena in its 16 KB block RAM."""

from __future__ import annotations

import pytest
from elftools.elf.elffile import ELFFile

from conftest import ROOT, SINE, host_target, run_doit
from tasks import fsutil
from tasks.config import ConfigError, load_pipeline
from tasks.layout import PipelineFiles

DSCNN = ROOT / "models" / "bench" / "dscnn_int8.tflite"
PSRAM, BLOCKRAM = (0x21000000, 16 << 20), (0x01000000, 16 << 10)


def m4(placement: str, name: str = "m4") -> str:
    return (f'[targets.{name}]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n'
            f"placement = {placement}\n")


def models() -> str:
    return f'[models.sine]\nsource = "{SINE}"\n[models.dscnn]\nsource = "{DSCNN}"\n'


@pytest.mark.parametrize("placement, key, message", [
    ('{weights = "sram"}', "placement.weights", "board 'mps2-an386' has no memory 'sram'.*use one of: flash, ram, "
                                                "psram, blockram"),
    ('{weights = "blockram"}', "placement.weights", "holds nothing at reset"),
    ('{arena = "flash"}', "placement.arena", "written at run time: not flash"),
    ('{stack = "ram"}', "placement.stack", "unknown key"),
])
def test_bad_placements_name_the_key(write_pipeline, placement, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(write_pipeline(models() + m4(placement)))
    assert f"targets.m4.{key}" in str(info.value)


def test_a_placement_needs_a_memory_map(write_pipeline):
    with pytest.raises(ConfigError, match="has no memory map to place into") as info:
        load_pipeline(write_pipeline(models() + host_target(extra='placement = {arena = "ram"}\n')))
    assert "targets.host.placement.arena" in str(info.value)


def _symbol(elf, name: str) -> int:
    with open(elf, "rb") as f:
        [sym] = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return sym["st_value"]


def _inside(address: int, region: tuple[int, int]) -> bool:
    return region[0] <= address < region[0] + region[1]


def test_weights_and_arena_in_other_memories(write_pipeline, tmp_path):
    pipeline = write_pipeline(models() + m4('{weights = "psram", arena = "blockram"}'))
    result = run_doit(pipeline, "-n", "2", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = PipelineFiles(tmp_path / "out")
    for model, weight in (("sine", "sine_c0"), ("dscnn", "dscnn_int8_0_conv2d_weights")):
        f = out.pair("m4", model, model, "llvm")
        assert fsutil.read_json(f.test_json)["passed"]
        assert _inside(_symbol(f.program, weight), PSRAM)
        assert _inside(_symbol(f.program, f"{model}_arena"), BLOCKRAM)
        sizes = fsutil.read_json(f.sizes_json)
        plan = fsutil.read_json(f.plan_json)
        assert sizes["memories"]["blockram"] == -(-plan["arena_bytes"] // 64) * 64
        assert sizes["memories"]["psram"] >= f.weights_bin.stat().st_size
        # Flash no longer holds the weights, nor RAM the arena.
        assert sizes["program"]["rodata"] < f.weights_bin.stat().st_size or model == "sine"
        assert sizes["program"]["bss"] < plan["arena_bytes"] or model == "sine"


def test_a_memory_too_small_is_refused_with_figures(write_pipeline, tmp_path):
    boards = tmp_path / "boards"
    boards.mkdir()
    text = (ROOT / "boards" / "mps2-an386.toml").read_text().replace("size = 16384", "size = 4096")
    (boards / "mps2-an386.toml").write_text(text)
    pipeline = write_pipeline('[pipeline]\nboards = "boards"\n' + f'[models.dscnn]\nsource = "{DSCNN}"\n'
                              + m4('{arena = "blockram"}'))
    result = run_doit(pipeline, "-n", "1", "build")
    assert result.returncode != 0
    assert "model dscnn needs 15.9 KiB in memory 'blockram' of board mps2-an386, which has 4.0 KiB" in result.stdout + result.stderr
    assert not PipelineFiles(tmp_path / "out").pair("m4", "dscnn", "dscnn", "llvm").program.exists()
