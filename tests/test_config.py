"""pipeline.toml and toolchain validation: every bad input is one error naming the file and the key."""

from __future__ import annotations

import pytest

from conftest import CONV2D, CONV2D_DATA, ROOT, SINE, host_target
from tasks.config import ConfigError, load_board, load_pipeline, load_toolchain

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
    assert e.key == "targets.host.runner" and "board 'host' runs programs with 'native', not 'jtag'" in str(e)


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


def test_kernel_cflags_apply_to_crt_kernels_in_release_only(tmp_path, write_pipeline):
    (tmp_path / "bad.toml").write_text('cc = "gcc"\nar = "ar"\ndebian_package = "gcc"\nkernel_cflags = "-O2"\n')
    with pytest.raises(ConfigError) as info:
        load_toolchain("bad", tmp_path)
    assert info.value.key == "kernel_cflags" and "expected a list" in str(info.value)
    p = load_pipeline(write_pipeline(GOOD_MODEL + cross_target("m4", "llvm", "arm-none-eabi-gcc", "mps2-an386")
                                     + cross_target("m4d", "llvm", "arm-none-eabi-gcc", "mps2-an386",
                                                    'profile = "debug"')))
    release, debug = p.targets["m4"], p.targets["m4d"]
    assert "-O2" not in release.cflags()
    assert release.cflags(kernel=True).index("-O2") > release.cflags().index("-Os")  # the last -O wins
    assert debug.cflags(kernel=True) == debug.cflags()


def test_objdump_is_named_or_sits_beside_a_gcc(tmp_path):
    assert load_toolchain("arm-none-eabi-gcc").objdump == "arm-none-eabi-objdump"  # beside the GCC
    assert load_toolchain("clang-cortex-m4").objdump == "arm-none-eabi-objdump"  # named
    (tmp_path / "clang.toml").write_text('cc = "clang"\nar = "llvm-ar"\ndebian_package = "clang"\n')
    assert load_toolchain("clang", tmp_path).objdump == ""  # none: the stack bound says so
    (tmp_path / "bad.toml").write_text('cc = "gcc"\nar = "ar"\ndebian_package = "gcc"\nobjdump = ["objdump"]\n')
    with pytest.raises(ConfigError) as info:
        load_toolchain("bad", tmp_path)
    assert info.value.key == "objdump"


def test_shipped_host_toolchain():
    tc = load_toolchain("host-gcc")
    assert tc.cc == "gcc" and tc.debian_package == "gcc" and "-lm" in tc.libs


def cross_target(name: str, backend: str, toolchain: str, board: str, extra: str = "") -> str:
    return f'[targets.{name}]\nbackend = "{backend}"\ntoolchain = "{toolchain}"\nboard = "{board}"\n{extra}\n'


def test_cortex_m4_target_derives_its_tvm_target(write_pipeline):
    p = load_pipeline(write_pipeline(GOOD_MODEL + cross_target("m4", "llvm", "arm-none-eabi-gcc", "mps2-an386")))
    t = p.targets["m4"]
    assert t.runner == "qemu-system"
    assert t.tvm_target() == {"kind": "llvm", "mtriple": "thumbv7em-unknown-none-eabihf", "mcpu": "cortex-m4",
                              "mattr": ["-slowfpvfmx"]}
    assert "-mfloat-abi=hard" in t.cflags() and "--specs=rdimon.specs" in t.ldflags()
    assert t.board.memory.ram_size == 4 * 1024 * 1024


def test_c_backend_target_is_just_c(write_pipeline):
    p = load_pipeline(write_pipeline(GOOD_MODEL + cross_target("m3", "c", "arm-none-eabi-gcc", "mps2-an385")))
    assert p.targets["m3"].tvm_target() == {"kind": "c"}


def test_clang_flags_get_the_boards_triple(write_pipeline):
    p = load_pipeline(write_pipeline(GOOD_MODEL + cross_target("a64", "c", "clang-aarch64-linux", "qemu-aarch64")))
    assert "--target=aarch64-unknown-linux-gnu" in p.targets["a64"].cflags()
    assert p.targets["a64"].runner == "qemu-user"


def test_float_abi_mismatch_between_tvm_and_compiler(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + cross_target("m4", "llvm", "arm-none-eabi-gcc", "mps2-an386",
                                                             'tvm = {mfloat-abi = "soft"}'))
    assert e.key == "targets.m4.tvm"
    assert "float ABI mismatch: TVM generates soft-float calls" in str(e) and "-mfloat-abi=hard" in str(e)


def test_float_abi_mismatch_from_the_triple(write_pipeline, tmp_path):
    boards = tmp_path / "boards"
    boards.mkdir()
    text = (ROOT / "boards" / "mps2-an386.toml").read_text()
    (boards / "m4-eabi.toml").write_text(text.replace("thumbv7em-unknown-none-eabihf", "thumbv7em-unknown-none-eabi"))
    with pytest.raises(ConfigError, match="float ABI mismatch: TVM generates soft-float calls for thumbv7em-unknown-none-eabi"):
        load_pipeline(write_pipeline(GOOD_MODEL + cross_target("m4", "llvm", "arm-none-eabi-gcc", "m4-eabi")),
                      board_dir=boards)


def test_cpu_mismatch(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + cross_target("m4", "llvm", "arm-none-eabi-gcc", "mps2-an386",
                                                             'tvm = {mcpu = "cortex-m7"}'))
    assert "CPU mismatch: TVM compiles for mcpu 'cortex-m7', the compiler flags say -mcpu=cortex-m4" in str(e)


def test_unknown_board_lists_the_known_ones(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + cross_target("x", "c", "host-gcc", "mps2-an368"))
    assert e.key == "targets.x.board" and "did you mean 'mps2-an386'?" in str(e)


def test_bare_metal_board_needs_a_memory_map(tmp_path):
    (tmp_path / "b.toml").write_text('kind = "bare-metal"\nrun = ["qemu", "{program}"]\ndebian_package = "q"\n')
    with pytest.raises(ConfigError, match="a bare-metal board needs its memory map"):
        load_board("b", tmp_path)


def test_board_mattr_reaches_the_tvm_target(tmp_path):
    from tasks.config import tvm_target

    m4 = load_board("mps2-an386")
    assert tvm_target("llvm", m4, {})["mattr"] == ["-slowfpvfmx"]
    assert "mattr" not in tvm_target("llvm", load_board("mps2-an385"), {})  # the M3 has no FPU
    assert tvm_target("llvm", m4, {"mattr": ["+dsp"]})["mattr"] == ["+dsp"]  # a target's own `tvm` wins
    (tmp_path / "b.toml").write_text('kind = "host"\nrun = ["{program}"]\ndebian_package = "q"\nmattr = "+fma"\n')
    with pytest.raises(ConfigError, match="mattr"):
        load_board("b", tmp_path)


def test_board_cpu_flags_are_for_host_boards(tmp_path):
    v3 = load_board("host-x86-64-v3")
    assert v3.cpu_flags == ("avx2", "fma") and v3.cpu == "x86-64-v3"
    assert "-march=x86-64-v3" in v3.cflags
    (tmp_path / "b.toml").write_text('kind = "linux"\nrun = ["qemu-aarch64", "{program}"]\ndebian_package = "q"\n'
                                     'cpu_flags = ["asimd"]\n')
    with pytest.raises(ConfigError, match=r"b.toml: cpu_flags: only a host board runs programs on this machine's CPU"):
        load_board("b", tmp_path)


@pytest.mark.parametrize("name", [p.stem for p in sorted((ROOT / "boards").glob("*.toml"))])
def test_shipped_boards_load(name):
    board = load_board(name)
    assert "{program}" in board.run


@pytest.mark.parametrize("name", [p.stem for p in sorted((ROOT / "toolchains").glob("*.toml"))])
def test_shipped_toolchains_load(name):
    assert load_toolchain(name).debian_package


def test_unknown_external_codegen(write_pipeline):
    e = load_error(write_pipeline, GOOD_MODEL + host_target(extra='offload = ["cmsis-nn"]'))
    assert e.key == "targets.host.offload[0]" and "unknown external codegen or op 'cmsis-nn'" in str(e)
    assert "use one of: crtforge_dense, crtforge_dense.dense, crtforge_dense.conv2d" in str(e)
    e = load_error(write_pipeline, GOOD_MODEL + host_target(extra='offload = ["crtforge_dense", "crtforge_dense.pool"]'))
    assert e.key == "targets.host.offload[1]" and "'crtforge_dense.pool'" in str(e)


@pytest.mark.parametrize("key, value", [("rtol", "inf"), ("rtol", "nan"), ("atol", "inf"), ("atol", "-inf")])
def test_tolerances_must_be_finite(write_pipeline, key, value):
    """inf or nan would make every output pass."""
    e = load_error(write_pipeline, f'[models.m]\nsource = "{SINE}"\n{key} = {value}\n' + host_target())
    assert e.key == f"models.m.{key}" and "must be a finite number" in str(e)


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_timeout_must_be_finite(write_pipeline, value):
    e = load_error(write_pipeline, f'[models.m]\nsource = "{SINE}"\n' + host_target(extra=f"timeout = {value}"))
    assert e.key == "targets.host.timeout" and "must be a finite number" in str(e)


def test_a_name_with_a_trailing_newline_is_rejected(write_pipeline):
    e = load_error(write_pipeline, f'[models."sine\\n"]\nsource = "{SINE}"\n' + host_target())
    assert "a model name is a letter" in str(e) and "'sine\\n'" in str(e)


def test_names_longer_than_64_characters_are_rejected(write_pipeline):
    e = load_error(write_pipeline, f'[models.{"m" * 65}]\nsource = "{SINE}"\n' + host_target())
    assert "a model name has at most 64 characters (65 given)" in str(e)
    e = load_error(write_pipeline, f'[models.m]\nsource = "{SINE}"\n' + host_target("t" * 300))
    assert "a target name has at most 64 characters (300 given)" in str(e)


def test_a_model_listed_twice_for_a_target(write_pipeline):
    e = load_error(write_pipeline, f'[models.m]\nsource = "{SINE}"\n' + host_target(extra='models = ["m", "m"]'))
    assert e.key == "targets.host.models[1]" and "model 'm' is listed twice" in str(e)


def test_prefixes_that_differ_only_in_case_clash(write_pipeline):
    """`dense` and `Dense` would both define DENSE_ARENA_BYTES and the same include guard."""
    e = load_error(write_pipeline, f'[models.dense]\nsource = "{SINE}"\n[models.Dense]\nsource = "{SINE}"\n'
                   + host_target())
    assert e.key == "models.Dense" and "clash in the header's upper-case macros" in str(e)


@pytest.mark.parametrize("reference, message", [("ort", "unknown reference 'ort'"),
                                                ("onnxruntime", "onnxruntime runs .onnx models, not sine_float")])
def test_reference_is_validated(write_pipeline, reference, message):
    e = load_error(write_pipeline, f'[models.m]\nsource = "{SINE}"\nreference = "{reference}"\n' + host_target())
    assert e.key == "models.m.reference" and message in str(e)


def test_settings_reach_only_the_stages_that_read_them(write_pipeline):
    """A field marked read_by(...) reaches only those stages; the rest reach every stage."""
    from tasks.config import settings

    pipeline = load_pipeline(write_pipeline(f'[models.m]\nsource = "{SINE}"\n' + host_target()))
    model, target = pipeline.models["m"], pipeline.targets["host"]
    assert "rtol" in settings(model, "compare") and "rtol" not in settings(model, "build")
    assert "toolchain" in settings(target, "link") and "toolchain" not in settings(target, "build")
    assert settings(target, "link")["toolchain"]["cflags"] == list(target.toolchain.cflags)
    assert "run" in settings(target, "run")["board"] and "run" not in settings(target, "build")["board"]
    assert settings(target, "build")["backend"] == "c" and settings(model, "import")["source"] == str(SINE)


def test_a_budget_takes_bytes_kib_and_mib(write_pipeline):
    text = f'[models.m]\nsource = "{SINE}"\n' + host_target("t", 'budget = {flash = "512K", ram = 4096}') \
        + host_target("u", 'budget = {flash = "2MiB"}') + host_target("v")
    targets = load_pipeline(write_pipeline(text)).targets
    assert (targets["t"].budget.flash, targets["t"].budget.ram) == (524288, 4096)
    assert (targets["u"].budget.flash, targets["u"].budget.ram) == (2097152, None)
    assert (targets["v"].budget.flash, targets["v"].budget.ram) == (None, None)


@pytest.mark.parametrize("table,key,problem", [
    ('budget = {flash = "lots"}', "targets.t.budget.flash", "'lots' is not a size"),
    ("budget = {ram = 0}", "targets.t.budget.ram", "must be a positive size"),
    ("budget = {ram = true}", "targets.t.budget.ram", "got a boolean"),
    ('budget = {rom = "1M"}', "targets.t.budget.rom", "did you mean 'ram'"),
    ("tune = {}", "targets.t.tune.trials", "missing required key"),
    ("tune = {trials = 0}", "targets.t.tune.trials", "must be at least 1"),
    ("tune = {trials = true}", "targets.t.tune.trials", "got a boolean"),
    ("tune = {trials = 8, batch = 0}", "targets.t.tune.batch", "must be at least 1"),
    ("tune = {trails = 8}", "targets.t.tune.trails", "did you mean 'trials'"),
])
def test_bad_budget_and_tune_tables_name_the_key(write_pipeline, table, key, problem):
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_pipeline(f'[models.m]\nsource = "{SINE}"\n'
                                     + host_target("t", table).replace('"c"', '"llvm"')))
    assert key in str(info.value) and problem in str(info.value)


FIRMWARE_MODELS = f'[models.a]\nsource = "{SINE}"\n[models.b]\nsource = "{SINE}"\n'


def test_a_firmware_defaults_to_every_target_that_builds_its_models(write_pipeline):
    text = (FIRMWARE_MODELS + host_target("t") + host_target("u", 'models = ["a"]')
            + '[firmware.fw]\nmodels = ["a", "b"]\nbudget = {ram = "64K"}\n')
    fw = load_pipeline(write_pipeline(text)).firmware["fw"]
    assert (fw.models, fw.targets, fw.prefix, fw.budget.ram) == (("a", "b"), ("t",), "fw", 65536)


@pytest.mark.parametrize("table,key,problem", [
    ('models = ["a"]', "firmware.fw.models", "a firmware links two or more models"),
    ('models = ["a", "c"]', "firmware.fw.models[1]", "unknown model 'c'"),
    ('models = ["a", "a"]', "firmware.fw.models[1]", "model 'a' is listed twice"),
    ('models = ["a", "b"]\ntargets = ["u"]', "firmware.fw.targets[0]", "target 'u' does not build model 'b'"),
    ('models = ["a", "b"]\ntargets = ["x"]', "firmware.fw.targets[0]", "unknown target 'x'"),
    ('models = ["a", "b"]\nbudget = {ram = "lots"}', "firmware.fw.budget.ram", "'lots' is not a size"),
    ('model = ["a", "b"]', "firmware.fw.model", "did you mean 'models'"),
])
def test_bad_firmware_tables_name_the_key(write_pipeline, table, key, problem):
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_pipeline(FIRMWARE_MODELS + host_target("t") + host_target("u", 'models = ["a"]')
                                     + f"[firmware.fw]\n{table}\n"))
    assert key in str(info.value) and problem in str(info.value)


def test_a_firmware_named_like_a_model_is_refused(write_pipeline):
    with pytest.raises(ConfigError, match="firmware 'A' and model 'a' give the same C prefix"):
        load_pipeline(write_pipeline(FIRMWARE_MODELS + host_target("t") + '[firmware.A]\nmodels = ["a", "b"]\n'))
