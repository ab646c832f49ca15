"""Cross targets: boards, emulators, and each way a program can fail to fit or run, as one clear error."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from conftest import CONV2D, CONVT, SINE, run_doit
from tasks import fsutil
from tasks.config import load_board, load_pipeline
from tasks.frontend.importer import ModelSignature, TensorSpec
from tasks.toolchain.link import (BARE_METAL_SOURCES, CRT_INCLUDE, CompileError, ToolchainError, board_with_memory,
                        check_fits, compile_c, linker_script, section_sizes)
from tasks.execute.run import RunError, run_program
from tasks.toolchain.stack import call_graph, disassemble, elf_functions, parse_objdump, read_stack_usage

SIG = ModelSignature(inputs=(), outputs=(TensorSpec("y", "output_0", (1,), "float32"),))

# Every cross target with the sine model; the two bigger models on the two Cortex-M boards.
CROSS_TARGETS = {
    "cortex-m4": ("llvm", "arm-none-eabi-gcc", "mps2-an386"),
    "cortex-m3": ("c", "arm-none-eabi-gcc", "mps2-an385"),
    "aarch64-linux": ("c", "aarch64-linux-gnu-gcc", "qemu-aarch64"),
    "riscv64-linux": ("c", "riscv64-linux-gnu-gcc", "qemu-riscv64"),
    "cortex-m4-clang": ("llvm", "clang-cortex-m4", "mps2-an386"),
    "aarch64-linux-clang": ("c", "clang-aarch64-linux", "qemu-aarch64"),
    "host-clang": ("llvm", "host-clang", "host"),
}
BIG_MODELS_ON = ("cortex-m4", "cortex-m3")
BARE_METAL = tuple(name for name, (_, _, board) in CROSS_TARGETS.items() if board.startswith("mps2"))
PAINTED = re.compile(r"^crtforge-stack (\d+)$", re.M)  # the harness's stack high-water


def cross_pipeline() -> str:
    text = (f'[models.sine]\nsource = "{SINE}"\n'
            f'[models.conv2d]\nsource = "{CONV2D}"\nexpected = "{CONV2D.parent}/test_data_set_0"\n'
            f'[models.convtranspose2d]\nsource = "{CONVT}/model.onnx"\nexpected = "{CONVT}/test_data_set_0"\n')
    for name, (backend, toolchain, board) in CROSS_TARGETS.items():
        models = '["sine", "conv2d", "convtranspose2d"]' if name in BIG_MODELS_ON else '["sine"]'
        text += (f'[targets.{name}]\nbackend = "{backend}"\ntoolchain = "{toolchain}"\nboard = "{board}"\n'
                 f'models = {models}\n')
    return text


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(cross_pipeline())
    result = run_doit(pipeline, "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return root, pipeline, result


def pairs():
    for name in CROSS_TARGETS:
        for model in (("sine", "conv2d", "convtranspose2d") if name in BIG_MODELS_ON else ("sine",)):
            yield name, model


@pytest.mark.parametrize("target, model", list(pairs()))
def test_every_cross_pair_passes(cross, target, model):
    d = cross[0] / "out" / target / model
    result = fsutil.read_json(d / "test.json")
    assert result["passed"] is True, result
    assert "crtforge-registry" in (d / "run.log").read_text()
    sizes = fsutil.read_json(d / "sizes.json")
    program = sizes["program"]
    assert program["flash"] == program["text"] + program["rodata"] + program["data"]
    assert program["flash"] > sizes["library"]["flash"]  # the program adds libc and the harness
    board = CROSS_TARGETS[target][2]
    if board.startswith("mps2"):
        assert sizes["stack_bytes"] == program["stack"] == 32768


def test_cross_outputs_agree_with_the_host_reference(cross):
    out = cross[0] / "out"
    ref = fsutil.load_npz(out / "_models" / "sine" / "reference.npz")["output_0"]
    for target in CROSS_TARGETS:
        np.testing.assert_allclose(fsutil.load_npz(out / target / "sine" / "outputs.npz")["output_0"], ref,
                                   rtol=1e-5, atol=1e-6)


def test_registry_and_weights_live_in_flash(cross):
    """The registry (.data.rel.ro from LLVM) and the weights must be placed in flash, not RAM."""
    program = cross[0] / "out" / "cortex-m4" / "convtranspose2d" / "program.elf"
    with open(program, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        addresses = {s.name: s["st_value"] for s in symtab.iter_symbols()}
    assert addresses["convtranspose2d_registry"] < 0x20000000
    assert addresses["convtranspose2d_c0"] < 0x20000000
    assert addresses["convtranspose2d_arena"] >= 0x20000000


@pytest.mark.parametrize("name", ["kernels.o", "metadata.o"])
def test_cortex_m4_objects_pass_floats_in_vfp_registers(cross, name):
    """Tag_ABI_VFP_args = 1 (VFP registers): TVM's objects agree with -mfloat-abi=hard."""
    with open(cross[0] / "out" / "cortex-m4" / "conv2d" / name, "rb") as f:
        attrs = ELFFile(f).get_section_by_name(".ARM.attributes")
        tags = {a.tag: a.value for sub in attrs.iter_subsections() for ss in sub.iter_subsubsections()
                for a in ss.iter_attributes()}
    assert tags.get("TAG_ABI_VFP_ARGS") == 1


def test_a_model_too_big_for_the_board_is_refused_at_link(cross):
    root, pipeline, _ = cross
    target = load_pipeline(pipeline).targets["cortex-m4"]
    small = replace(target, board=board_with_memory(target.board, ram_size=48 * 1024))
    sizes = section_sizes(root / "out" / "cortex-m4" / "convtranspose2d" / "program.elf")
    with pytest.raises(CompileError, match=r"model convtranspose2d needs \d+\.\d KiB RAM, board mps2-an386 has "
                                           r"48\.0 KiB \(arena 9\.9 KiB"):
        check_fits("model convtranspose2d", small.board, sizes, 10112)
    tiny_flash = board_with_memory(target.board, flash_size=8 * 1024)
    with pytest.raises(CompileError, match="needs .* KiB flash, board mps2-an386 has 8.0 KiB"):
        check_fits("model convtranspose2d", tiny_flash, sizes, 10112)


def test_link_refuses_a_too_big_program(cross, tmp_path):
    """The whole link stage, with the board's RAM shrunk below what the model needs."""
    from tasks.layout import PipelineFiles
    from tasks.pair import Pair
    from tasks.toolchain.link import link_pair

    root, pipeline_path, _ = cross
    pipeline = load_pipeline(pipeline_path)
    target = pipeline.targets["cortex-m4"]
    model = pipeline.models["convtranspose2d"]
    small = replace(target, board=board_with_memory(target.board, ram_size=56 * 1024))
    p = Pair.at(PipelineFiles(pipeline.out), model, small, pipeline.file)
    f = p.files
    with pytest.raises(CompileError, match="model convtranspose2d needs .* KiB RAM, board mps2-an386 has 56.0 KiB"):
        link_pair(p)
    assert not f.program.exists()  # nothing left that a later run would trust
    # the next real build relinks it
    again = run_doit(pipeline_path, "build")
    assert again.returncode == 0 and "link:cortex-m4/convtranspose2d" in again.executed()


@pytest.mark.parametrize("target, model", list(pairs()))
def test_stack_bound_covers_the_painted_high_water(cross, target, model):
    d = cross[0] / "out" / target / model
    bound = fsutil.read_json(d / "sizes.json")["stack_bound"]
    if target not in BARE_METAL:
        assert bound is None
        return
    painted = int(PAINTED.search((d / "run.log").read_text()).group(1))
    run = f"{model}_run"
    # every call followed, the LLVM kernels' calls of the workspace functions through their pointers in flash too
    assert bound["unbounded"] is None, bound
    assert bound["root"] == run and bound["path"][0] == run and bound["bytes"] == sum(bound["frames"])
    assert painted <= bound["bytes"] < 32768
    if model == "convtranspose2d" and target == "cortex-m4":
        assert "TVMBackendAllocWorkspace" in bound["path"]


@pytest.mark.parametrize("target", BARE_METAL)
def test_stack_usage_files_and_the_disassembly_agree(cross, target):
    """Where the compiler wrote a frame (-fstack-usage), the disassembly reads the same bytes: the disassembly is
    trusted where there is no .su (TVM's LLVM objects, newlib, libgcc)."""
    d = cross[0] / "out" / target / "sine"
    su = read_stack_usage(sorted((d / "obj").glob("*.su")))
    objdump = load_pipeline(cross[1]).targets[target].toolchain.objdump
    graph = call_graph(parse_objdump(disassemble(objdump, d / "program.elf")), elf_functions(d / "program.elf"), {})
    frames = {f.name: f.frame for f in graph.values()}
    both = sorted(name for name, size in su.items() if name in frames and size is not None)
    assert len(both) >= 15 and "sine_run" in both
    assert {name: frames[name] for name in both} == {name: su[name] for name in both}


def test_link_refuses_a_stack_bound_over_the_board_stack(cross):
    from tasks.layout import PipelineFiles
    from tasks.pair import Pair
    from tasks.toolchain.link import link_pair

    root, pipeline_path, _ = cross
    pipeline = load_pipeline(pipeline_path)
    target = pipeline.targets["cortex-m3"]
    bound = fsutil.read_json(root / "out" / "cortex-m3" / "sine" / "sizes.json")["stack_bound"]
    small = replace(target, board=board_with_memory(target.board, stack_size=bound["bytes"] - 8))
    p = Pair.at(PipelineFiles(pipeline.out), pipeline.models["sine"], small, pipeline.file)
    chain = " -> ".join(f"{name} ({frame} B)" for name, frame in zip(bound["path"], bound["frames"]))
    with pytest.raises(CompileError) as info:
        link_pair(p)
    assert str(info.value) == (f"model sine on target cortex-m3 needs up to {bound['bytes']} B of stack, board "
                               f"mps2-an385 reserves {bound['bytes'] - 8} B (stack_size); the deepest chain: "
                               f"{chain}. HINT: raise the board's memory.stack_size in mps2-an385.toml, or make "
                               "the model smaller")
    assert chain.startswith("sine_run (32 B) -> ")
    assert not p.files.program.exists()
    again = run_doit(pipeline_path, "build")
    assert again.returncode == 0 and "link:cortex-m3/sine" in again.executed()


def test_missing_toolchain_names_the_debian_package(cross, tmp_path):
    target = load_pipeline(cross[1]).targets["cortex-m3"]
    missing = replace(target, toolchain=replace(target.toolchain, cc="arm-none-eabi-gcc-99"))
    with pytest.raises(ToolchainError, match=r"'arm-none-eabi-gcc-99' is not installed \(toolchain "
                                             r"'arm-none-eabi-gcc'\). HINT: apt-get install gcc-arm-none-eabi"):
        compile_c(missing, BARE_METAL_SOURCES[0], tmp_path / "x.o", [CRT_INCLUDE])


def test_missing_emulator_names_the_debian_package(tmp_path):
    board = replace(load_board("mps2-an385"), run=("qemu-system-arm-missing", "-kernel", "{program}"))
    with pytest.raises(RunError, match="'qemu-system-arm-missing' is not installed .*apt-get install qemu-system-arm"):
        run_program(board, tmp_path / "p.elf", SIG, 5, tmp_path / "o.npz", tmp_path / "run.log")


def bare_metal_program(tmp_path, body: str, board_name: str = "mps2-an385"):
    """A bare-metal program for `board_name` with our start-up code: `main` is `body`."""
    board = load_board(board_name)
    (tmp_path / "main.c").write_text("#include <stdio.h>\nint main(void) {" + body + "}\n")
    (tmp_path / "board.ld").write_text(linker_script(board))
    exe = tmp_path / "p.elf"
    subprocess.run(["arm-none-eabi-gcc", *board.cflags, "-O2", "--specs=rdimon.specs", "-Wl,--no-warn-rwx-segments",
                    "-T", str(tmp_path / "board.ld"), str(BARE_METAL_SOURCES[0]), str(tmp_path / "main.c"),
                    "-o", str(exe)], check=True)
    return board, exe


def test_emulator_hang_is_stopped_by_the_timeout(tmp_path):
    board, exe = bare_metal_program(tmp_path, "for (;;) { __asm__ volatile(\"nop\"); }")
    with pytest.raises(RunError, match="did not finish within 2 s on board 'mps2-an385' .*HINT: raise"):
        run_program(board, exe, SIG, 2, tmp_path / "o.npz", tmp_path / "run.log")


def test_hard_fault_is_reported(tmp_path):
    board, exe = bare_metal_program(tmp_path, 'printf("x\\n"); ((void (*)(void))0x30000000)(); return 0;')
    with pytest.raises(RunError, match="crashed on board 'mps2-an385' .*crtforge-fault hard fault"):
        run_program(board, exe, SIG, 20, tmp_path / "o.npz", tmp_path / "run.log")
    assert not (tmp_path / "o.npz").exists()
