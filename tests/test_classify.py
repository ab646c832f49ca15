"""Classification over module trees built with TVM's own APIs."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax

from conftest import SINE
from tasks.compile import relax_build
from tasks.compile.classify import ClassifyError, ModuleRecord, classify, inventory
from tasks.frontend.importer import load_relax

c_source_module = tvm.get_global_func("runtime.CSourceModuleCreate")


def test_c_source_module_without_constants_is_dso():
    mod = c_source_module("int f1;", "c", ["f1", "f2"], [])
    result = classify(inventory(mod))
    [v] = result.modules
    assert (v.record.kind, v.verdict) == ("c", "dso")
    assert v.record.functions == ("f1", "f2")
    assert result.registry_functions == ["f1", "f2"]
    assert v.to_dict()["is_compilation_exportable"] is True


def test_c_source_module_with_constants_needs_them_resolved():
    mod = c_source_module("int g;", "c", ["g"], ["g_const_0", "g_const_1"])
    [v] = classify(inventory(mod)).modules
    assert v.verdict == "dso+constants"
    assert v.record.const_vars == ("g_const_0", "g_const_1")
    assert "2 constant(s) resolved" in v.reason


@pytest.mark.parametrize("kind", ["c", "llvm"])
def test_kernels_module_of_both_backends(kind):
    result = relax_build.build(SINE, "sine", {"kind": kind})
    records = inventory(result.runtime_module)
    classified = classify(records)
    assert records[0].kind == kind
    assert classified.modules[0].verdict == "dso"
    assert classified.registry_functions == result.plan.kernels


def test_import_tree_is_walked_depth_first():
    root = c_source_module("", "c", ["a"], [])
    child = c_source_module("", "c", ["b"], ["b_c0"])
    grandchild = c_source_module("", "c", ["c"], [])
    child.import_module(grandchild)
    root.import_module(child)
    records = inventory(root)
    assert [(r.path, r.functions) for r in records] == [("0", ("a",)), ("0.0", ("b",)), ("0.0.0", ("c",))]
    assert classify(records).counts() == {"dso": 2, "dso+constants": 1}


def test_duplicate_symbol_names_both_modules():
    root = c_source_module("", "c", ["k1", "shared"], [])
    root.import_module(c_source_module("", "c", ["shared"], []))
    with pytest.raises(ClassifyError, match=r"duplicate symbol 'shared': defined by module 0 .* and module 0.0"):
        classify(inventory(root))


def test_vm_executable_is_refused_with_a_reason():
    executable = relax.build(load_relax(SINE), target=tvm.target.Target({"kind": "llvm"}))
    records = inventory(executable.mod)
    with pytest.raises(ClassifyError) as info:
        classify(records)
    message = str(info.value)
    assert f"module kind '{records[0].kind}'" in message
    assert "cannot be hosted by the C runtime" in message and "HINT:" in message


def test_records_round_trip_through_json():
    record = ModuleRecord("0.1", "c", 5, ("f",), ("cv",))
    assert ModuleRecord.from_dict(record.to_dict()) == record
