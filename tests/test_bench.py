"""Benchmarks: exact, repeatable instruction counts, size splits, the arena bound, peers, and the report."""

from __future__ import annotations

import pytest

from conftest import CONV2D, SINE, run_doit
from tasks import fsutil
from tasks.bench.measure import fastest_host, instructions
from tasks.config import load_pipeline
from tasks.layout import PipelineFiles
from tasks.pair import Pair

TARGETS = ('[targets.host]\nbackend = "c"\ntoolchain = "host-gcc"\n'
           '[targets.cortex-m4]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n'
           '[targets.cortex-m4-debug]\nbackend = "llvm"\ntoolchain = "arm-none-eabi-gcc"\nboard = "mps2-an386"\n'
           'profile = "debug"\n')


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    pipeline = root / "pipeline.toml"
    pipeline.write_text(f'[models.sine]\nsource = "{SINE}"\n[models.conv2d]\nsource = "{CONV2D}"\n' + TARGETS)
    result = run_doit(pipeline, "bench")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return root, pipeline, result


def test_every_pair_is_measured(benched):
    report = fsutil.read_json(benched[0] / "out" / "bench.json")
    rows = {(r["target"], r["model"]): r for r in report["results"]}
    assert set(rows) == {(t, m) for t in ("host", "cortex-m4", "cortex-m4-debug") for m in ("sine", "conv2d")}
    for r in rows.values():
        assert r["instructions"] > r["macs"] > 0
        assert r["arena"] <= 1.05 * r["arena_lower_bound"] or r["arena_lower_bound"] == 0
        flash = r["sizes"]["flash"]
        assert flash["kernels"] > 0 and flash["weights"] > 0 and flash["libc_and_rest"] > 0
        assert sum(v for k, v in flash.items() if k != "total") == flash["total"]
    assert rows[("cortex-m4", "sine")]["sizes"]["flash"]["weights"] == 4 * (16 + 16 + 256 + 16 + 16 + 1)
    assert 0 < rows[("cortex-m4", "conv2d")]["stack_high_water"] < 32768  # painted and measured on the board
    assert rows[("host", "sine")]["wall_ns"] > 0 and rows[("host", "sine")]["stack_high_water"] is None


def test_the_stack_bound_is_beside_the_high_water(benched):
    root = benched[0] / "out"
    rows = {(r["target"], r["model"]): r for r in fsutil.read_json(root / "bench.json")["results"]}
    for (target, model), r in rows.items():
        bound = r["stack_bound"]
        if target == "host":
            assert bound is None
            continue
        assert bound == fsutil.read_json(root / target / model / "sizes.json")["stack_bound"]
        assert bound["path"][0] == f"{model}_run" and r["stack_high_water"] <= bound["bytes"] < r["stack_reserved"]
    md = (root / "bench.md").read_text()
    assert "| workspace | stack high-water | stack bound |" in md
    sine = rows[("cortex-m4", "sine")]
    assert f"| {sine['stack_high_water']:,} | {sine['stack_bound']['bytes']:,} |" in md


def test_instruction_counts_repeat_exactly(benched):
    root, pipeline_file, _ = benched
    pipeline = load_pipeline(pipeline_file)
    plugin = root / "out" / "bench" / "crtforge_insns.so"
    for target in ("cortex-m4", "host"):
        p = Pair.at(PipelineFiles(pipeline.out), pipeline.models["conv2d"], pipeline.targets[target], pipeline.file)
        assert instructions(p, plugin) == instructions(p, plugin)
    emulated = Pair.at(PipelineFiles(pipeline.out), pipeline.models["conv2d"], pipeline.targets["cortex-m4"], pipeline.file)
    recorded = fsutil.read_json(emulated.files.dir / "bench.json")["instructions"]
    assert instructions(emulated, plugin)[0] == recorded


def test_peers_and_profiles_in_the_report(benched):
    root, _, result = benched
    report = fsutil.read_json(root / "out" / "bench.json")
    peers = {c["peer"]: c for c in report["peers"]}
    assert peers["tflm"]["model"] == "sine" and peers["tflm"]["theirs"] > 0 and peers["tflm"]["ratio"] > 0
    assert peers["onnxruntime"]["model"] == "conv2d" and peers["onnxruntime"]["theirs"] > 0
    assert "sine: crtforge (host) / tflm = " in result.stdout
    assert peers["tflm"]["target"] == "host" and set(peers["tflm"]["all_targets"]) == {"host"}
    profiles = {p["model"]: p for p in report["profiles"]}
    for p in profiles.values():
        assert p["release_flash"] < p["debug_flash"] and p["release_model_flash"] < p["debug_model_flash"]
    md = (root / "out" / "bench.md").read_text()
    assert "## cortex-m4 (mps2-an386, llvm, release)" in md and "## Release and debug profiles" in md
    for target in ("host", "cortex-m4", "cortex-m4-debug"):
        assert (root / "out" / "bench" / f"{target}.png").read_bytes()[:4] == b"\x89PNG"


def test_second_bench_runs_nothing(benched):
    _, pipeline, _ = benched
    assert run_doit(pipeline, "bench").executed() == []


def test_peers_are_compared_with_the_fastest_native_release_build():
    def row(target, wall, profile="release"):
        return {"target": target, "model": "m", "wall_ns": wall, "profile": profile, "instructions": wall}

    results = [row("host", 90.0), row("host-offload", 30.0), row("host-debug", 10.0, "debug"),
               row("cortex-m4", None), {**row("host", 5.0), "model": "other"}]
    best, every = fastest_host(results, "m", "wall_ns")
    assert best["target"] == "host-offload" and every == {"host": 90.0, "host-offload": 30.0}
    assert fastest_host(results, "absent", "wall_ns") == (None, {})


def test_a_tuned_pair_is_compared_with_the_same_build_untuned():
    from tasks.bench.measure import _tuning_lines, tuning_comparisons

    m4 = {"kind": "llvm", "mtriple": "thumbv7em-unknown-none-eabihf", "mcpu": "cortex-m4"}

    def row(target, instructions, board="mps2-an386", toolchain="arm-none-eabi-gcc", offload=(), tuning=None,
            backend="llvm", tvm_target=m4):
        return {"target": target, "model": "m", "macs": 1000, "instructions": instructions, "board": board,
                "toolchain": toolchain, "offload": list(offload), "tuning": tuning, "profile": "release",
                "wall_ns": None, "backend": backend, "tvm_target": tvm_target}

    tuning = {"cost": "instructions", "source": "committed", "trials": 96, "seconds": 120.5, "records_bytes": 5000,
              "kernels": [{"name": "fused_matmul", "untuned": 900.0, "best": 300.0, "trials": 96}]}
    results = [row("m4", 3000), row("m4-clang", 2000, toolchain="clang-cortex-m4"),
               row("m4-offload", 1000, offload=["crtforge_dense"]), row("m3", 9000, board="mps2-an385"),
               row("m4-c", 2500, backend="c", tvm_target={"kind": "c"}),
               row("m4-fast", 2600, tvm_target={**m4, "mattr": ["-slowfpvfmx"]}),
               row("m4-tuned", 1500, tuning=tuning)]
    [c] = tuning_comparisons(results)
    assert (c["target"], c["untuned_target"], c["untuned_instructions"], c["instructions"]) == ("m4-tuned", "m4",
                                                                                               3000, 1500)
    assert c["trials"] == 96 and c["tuning_seconds"] == 120.5 and c["records_bytes"] == 5000
    assert c["kernels"] == {"fused_matmul": [900.0, 300.0]}
    line = _tuning_lines([c])[-2]
    assert line.startswith("| m4-tuned | m | m4 | 3,000 | 1,500 | 3.00 | 1.50 | n/a | n/a | 96 | 120.5 | 5,000 |")
    assert line.endswith("fused_matmul 900 → 300 |")


def test_per_kernel_profile_sums_to_the_inference_on_qemu(benched):
    root, pipeline_file, _ = benched
    pipeline = load_pipeline(pipeline_file)
    for model in ("sine", "conv2d"):
        p = Pair.at(PipelineFiles(pipeline.out), pipeline.models[model], pipeline.targets["cortex-m4"], pipeline.file)
        profile = fsutil.read_json(p.files.profile_json)
        plan = fsutil.read_json(p.files.plan_json)
        bench = fsutil.read_json(p.files.bench_json)
        assert [c["kernel"] for c in profile["calls"]] == [c["kernel"] for c in plan["calls"]]
        pieces = profile["entry"] + profile["exit"] + sum(c["instructions"] for c in profile["calls"])
        assert pieces == profile["instructions"]  # exact: no gap between marks
        # Each mark costs a call and a return: a few instructions, whatever the model.
        assert 0 < profile["instructions"] - bench["instructions"] <= 6 * (len(plan["calls"]) + 1)
        assert all(c["instructions"] > 0 for c in profile["calls"])
        assert profile["program_sha256"] == fsutil.sha256_file(p.files.profile_program)
    assert "## Per-kernel profile (qemu targets)" in (root / "out" / "bench.md").read_text()
    host = fsutil.read_json(root / "out" / "host" / "sine" / "bench.json")
    assert host["kernel_profile"] is None  # native runs are counted by callgrind, not split per call yet


def _benched_pair(benched, target: str, model: str) -> Pair:
    pipeline = load_pipeline(benched[1])
    return Pair.at(PipelineFiles(pipeline.out), pipeline.models[model], pipeline.targets[target], pipeline.file)


@pytest.mark.parametrize("target", ["host", "cortex-m4"])
def test_bisect_names_the_kernel_a_fault_was_injected_into(benched, target):
    from tasks.execute.bisect import bisect_pair

    p = _benched_pair(benched, target, "sine")
    clean = bisect_pair(p)
    assert clean.first_diverging is None and clean.reference == "tflm"
    assert [c.compared and c.passed for c in clean.calls] == [True, True, True]
    faulty = bisect_pair(p, fault_call=1)
    assert faulty.first_diverging == 1 and faulty.calls[0].passed and not faulty.calls[1].passed
    one = faulty.calls[1]
    assert one.source_ops == ("FULLY_CONNECTED (operator 1)",) and one.where.startswith("arena +")
    # The flipped bit is in the first element: it is the worst, and the only one wrong in that call.
    assert one.mismatched == 1 and one.worst[0]["index"] == [0, 0] and one.max_abs_error > 1
    assert "call 1 is the first that differs from tflm: sine_fused_matmul1_add_relu, from FULLY_CONNECTED " \
           "(operator 1)" in faulty.summary()
    assert "; 1 element outside tolerance" in faulty.summary()
    assert fsutil.read_json(p.files.bisect_json)["fault_call"] == 1


def test_bisect_of_an_onnx_model_asks_onnxruntime_for_the_node(benched):
    from tasks.execute.bisect import bisect_pair

    p = _benched_pair(benched, "host", "conv2d")
    assert bisect_pair(p).first_diverging is None
    faulty = bisect_pair(p, fault_call=0)
    assert faulty.reference == "onnxruntime" and faulty.first_diverging == 0
    assert faulty.calls[0].source_ops == ("Conv (node 0)",) and faulty.calls[0].where == "output buffer 0"


def test_bisect_compares_only_where_the_source_model_has_the_tensor(benched):
    from tasks.execute.bisect import bisect_pair

    # Debug: matmul, add and relu per dense layer; only each layer's last kernel has a TFLite tensor to compare.
    checks = bisect_pair(_benched_pair(benched, "cortex-m4-debug", "sine")).calls
    assert [c.compared for c in checks] == [False, False, True, False, False, True, False, True]
    assert checks[0].note == "an inner step of FULLY_CONNECTED (operator 0): the source model has no tensor for it"
    assert all(c.passed for c in checks if c.compared)


def test_bisect_task(benched):
    root, pipeline, _ = benched
    result = run_doit(pipeline, "bisect:cortex-m4/conv2d")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "bisect cortex-m4/conv2d: every compared call agrees with onnxruntime (1 of 1 calls compared)" in result.stdout
    assert fsutil.read_json(root / "out" / "cortex-m4" / "conv2d" / "bisect.json")["first_diverging"] is None
