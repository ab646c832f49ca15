"""crtforge's external codegen: real external modules with constants, classified and resolved at codegen."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CONV2D, SINE, run_doit
from tasks import fsutil
from tasks.compile import relax_build
from tasks.compile.classify import classify, inventory
from tasks.emit.codegen import GeneratedFrom, emit_executor, external_constants, weights_of
from tasks.frontend.importer import load_relax, signature
from tasks.compile.offload import external_modules, partition

GEN = GeneratedFrom(model="sine", target="t", source="sine_float.tflite", sha256="0" * 64,
                    tvm_version="0.27.0.post1", header="sine.h")


@pytest.fixture(scope="module")
def offloaded():
    return relax_build.build(SINE, "sine", {"kind": "c"}, offload=("crtforge_dense",))


def test_partition_offloads_every_dense_with_bias():
    mods, constants = external_modules(partition(load_relax(SINE), "sine", ("crtforge_dense",)))
    assert len(mods) == 3  # dense 1-16-16-1
    for m in mods:
        [name] = m.get_function("get_func_names")()
        assert m.kind == "c" and name.startswith("sine_")
        assert len(m.get_function("get_const_vars")()) == 2
        assert f"int32_t __tvm_ffi_{name}(" in m.inspect_source()
    assert sorted(v.shape for v in constants.values()) == [(1,), (1, 16), (16,), (16,), (16, 1), (16, 16)]


def test_nothing_matches_in_a_convolution():
    mods, constants = external_modules(partition(load_relax(CONV2D), "conv2d", ("crtforge_dense",)))
    assert mods == [] and constants == {}


def test_external_modules_are_classified_dso_with_constants(offloaded):
    cls = classify(inventory(offloaded.runtime_module))
    assert cls.counts() == {"dso": 1, "dso+constants": 3}
    offloaded_names = {f for v in cls.modules if v.verdict == "dso+constants" for f in v.record.functions}
    assert offloaded_names <= set(cls.registry_functions)
    assert offloaded_names <= {c.kernel for c in offloaded.plan.calls}  # the plan calls them directly
    assert not any("matmul" in k and "crtforge" not in k for k in offloaded.plan.kernels)


def test_constants_are_resolved_into_linked_data(offloaded):
    cls = classify(inventory(offloaded.runtime_module))
    consts = external_constants(cls, offloaded.params)
    assert len(consts) == 6
    sig = signature(load_relax(SINE), SINE)
    weights = weights_of(offloaded.plan, offloaded.params, cls, "sine", GEN)
    text = emit_executor(offloaded.plan, weights, sig, "sine", GEN)
    assert "resolved here at build time" in text
    for c in weights.external:
        # Under the module's own name (its C declares it extern), as a symbol of weights.S over the blob.
        assert f"extern const float {c['name']}[{c['size']}];" in text
        assert f"{c['name']}:\n  .incbin \"weights.bin\", {c['offset']}, {c['nbytes']}" in weights.asm
        data = np.frombuffer(weights.blob[c["offset"]:c["offset"] + c["nbytes"]], np.float32)
        np.testing.assert_array_equal(data, offloaded.params[c["name"]].reshape(-1))


def test_no_constant_table_when_no_module_needs_one():
    plain = relax_build.build(SINE, "sine", {"kind": "c"})
    cls = classify(inventory(plain.runtime_module))
    assert external_constants(cls, plain.params) == []
    weights = weights_of(plain.plan, plain.params, cls, "sine", GEN)
    text = emit_executor(plain.plan, weights, signature(load_relax(SINE), SINE), "sine", GEN)
    assert "external modules need" not in text and "const_loader" not in text


def test_offload_builds_and_passes_on_host_and_cortex_m4(write_pipeline, tmp_path):
    pipeline = write_pipeline(
        f'[models.sine]\nsource = "{SINE}"\n'
        '[targets.host-offload]\nbackend = "c"\ntoolchain = "host-gcc"\noffload = ["crtforge_dense"]\n'
        '[targets.m4-offload]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n'
        'offload = ["crtforge_dense"]\n')
    result = run_doit(pipeline, "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.count("dso:1 dso+constants:3") == 2
    for target in ("host-offload", "m4-offload"):
        d = tmp_path / "out" / target / "sine"
        assert fsutil.read_json(d / "test.json")["passed"] is True
        cls = fsutil.read_json(d / "classification.json")
        offloaded = [f for m in cls["modules"] if m["verdict"] == "dso+constants" for f in m["functions"]]
        assert len(offloaded) == 3 and set(offloaded) <= set(cls["registry"])
        # the program walked the whole registry, offloaded functions included
        assert f"crtforge-registry {len(cls['registry'])}\n" in (d / "run.log").read_text()
        assert "crtforge_dense_f32(" in (d / "external.c").read_text()
