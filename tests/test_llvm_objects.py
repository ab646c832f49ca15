"""The llvm backend's objects, inspected: registry in metadata.o, kernels in kernels.o, no start-up code."""

from __future__ import annotations

import subprocess

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from conftest import SINE
from tasks.compile import relax_build
from tasks.compile.classify import classify, inventory
from tasks.emit.codegen import GeneratedFrom, Registry, compile_ll, emit_metadata_ll
from tasks.toolchain.link import CompileError, check_duplicate_symbols

GEN = GeneratedFrom(model="sine", target="host-llvm", source="sine_float.tflite", sha256="0" * 64,
                    tvm_version="0.27.0.post1", header="sine.h")
STARTUP_SECTIONS = (".init_array", ".ctors", ".preinit_array")


def symbols(path):
    """{name: defined?} for global and weak symbols, and the section names."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        syms = {}
        for sec in elf.iter_sections():
            if isinstance(sec, SymbolTableSection):
                for s in sec.iter_symbols():
                    if s["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK") and s.name:
                        syms[s.name] = s["st_shndx"] != "SHN_UNDEF"
        return syms, [sec.name for sec in elf.iter_sections()]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    d = tmp_path_factory.mktemp("llvm")
    result = relax_build.build(SINE, "sine", {"kind": "llvm"})
    relax_build.write_kernels(result, d / "kernels.o", "sine", SINE, "host-llvm")
    registry = Registry.from_classification("sine", classify(inventory(result.runtime_module)))
    (d / "metadata.ll").write_text(emit_metadata_ll(registry, GEN, {"kind": "llvm"}))
    compile_ll(d / "metadata.ll", d / "metadata.o")
    return d, result.plan.kernels


def test_entry_point_is_defined_in_metadata_and_kernels_are_extern(objects):
    d, kernels = objects
    meta, _ = symbols(d / "metadata.o")
    assert meta["TVMSystemLibEntryPoint"] is True
    for k in kernels:
        assert meta[f"__tvm_ffi_{k}"] is False, k  # referenced, undefined: extern, never internal


def test_kernels_are_defined_in_kernels_o(objects):
    d, kernels = objects
    kern, _ = symbols(d / "kernels.o")
    for k in kernels:
        assert kern[f"__tvm_ffi_{k}"] is True
    assert "TVMSystemLibEntryPoint" not in kern


@pytest.mark.parametrize("name", ["kernels.o", "metadata.o"])
def test_no_startup_code(objects, name):
    _, sections = symbols(objects[0] / name)
    assert not [s for s in sections if s.startswith(STARTUP_SECTIONS)], sections
    assert "__tvm_module_startup" not in symbols(objects[0] / name)[0]


def test_metadata_object_is_for_the_kernels_target(objects):
    d, _ = objects
    with open(d / "metadata.o", "rb") as a, open(d / "kernels.o", "rb") as b:
        ea, eb = ELFFile(a), ELFFile(b)
        assert (ea["e_machine"], ea.elfclass, ea.little_endian) == (eb["e_machine"], eb.elfclass, eb.little_endian)
    assert 'target triple = "' in (d / "metadata.ll").read_text()


def test_duplicate_symbols_across_linked_objects_name_both(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.c").write_text("int __tvm_ffi_k(void) { return 1; }\n")
        subprocess.run(["gcc", "-c", str(tmp_path / f"{name}.c"), "-o", str(tmp_path / f"{name}.o")], check=True)
    with pytest.raises(CompileError, match="duplicate symbol '__tvm_ffi_k': defined in a.o and b.o"):
        check_duplicate_symbols([tmp_path / "a.o", tmp_path / "b.o"])
