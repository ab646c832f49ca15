"""The arena planner: storages alive at the same step never share bytes; dead ones are reused."""

from __future__ import annotations

import random

from tasks.compile.plan import ARENA_ALIGN, IN_ARENA, Storage, plan_arena


def assert_valid(storages: list[Storage], arena: int) -> None:
    """Arena buffers are aligned, inside the arena, and disjoint when alive together."""
    storages = [s for s in storages if s.kind in IN_ARENA]
    for s in storages:
        assert s.offset % ARENA_ALIGN == 0
        assert s.offset + s.nbytes <= arena
    for a in storages:
        for b in storages:
            if a.id < b.id and a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)


def test_disjoint_lifetimes_share_the_arena():
    storages = [Storage(0, 1000, 0, 2), Storage(1, 800, 3, 5), Storage(2, 1000, 6, 9)]
    arena = plan_arena(storages)
    assert arena == 1024
    assert {s.offset for s in storages} == {0}


def test_overlapping_lifetimes_get_disjoint_bytes():
    storages = [Storage(0, 100, 0, 5), Storage(1, 100, 2, 7), Storage(2, 100, 6, 9)]
    arena = plan_arena(storages)
    assert_valid(storages, arena)
    assert arena == 2 * ARENA_ALIGN * 2  # two live at once, each 100 B padded to 128


def test_random_plans_are_valid_and_never_worse_than_no_reuse():
    rng = random.Random(7)
    for _ in range(200):
        storages = []
        for i in range(rng.randint(1, 12)):
            first = rng.randint(0, 20)
            storages.append(Storage(i, rng.randint(1, 5000), first, first + rng.randint(0, 10)))
        arena = plan_arena(storages)
        assert_valid(storages, arena)
        assert arena <= sum((s.nbytes + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN for s in storages)


def test_empty_plan_needs_no_arena():
    assert plan_arena([]) == 0


def test_lower_bound_is_the_peak_of_live_bytes():
    from tasks.compile.plan import STORAGE_OUTPUT, STORAGE_WORKSPACE, lower_bound

    storages = [Storage(0, 100, 0, 3), Storage(1, 50, 2, 5), Storage(2, 70, 4, 4, kind=STORAGE_WORKSPACE),
                Storage(3, 1000, 1, 5, kind=STORAGE_OUTPUT, output=0)]  # outputs live in the caller's buffer
    assert lower_bound(storages) == 150  # steps 2-3: 100 + 50 (step 4: 50 + 70)
    assert plan_arena(storages) >= lower_bound(storages)
    assert storages[3].offset == -1  # never placed in the arena
    assert plan_arena([Storage(0, 480, 0, 3, kind=STORAGE_OUTPUT, output=0)]) == 0  # and never sized into it


def test_default_models_plan_at_the_lower_bound():
    from conftest import CONV2D, CONVT, SINE
    from tasks.compile.relax_build import build

    for source in (SINE, CONV2D, CONVT / "model.onnx"):
        plan = build(source, "m", {"kind": "c"}).plan
        assert plan.arena_bytes <= 1.05 * plan.arena_lower_bound, source
        assert_valid(plan.storages, plan.arena_bytes)


def test_a_workspace_does_not_push_a_tensor_past_the_lower_bound():
    """The debug conv net's shape: largest-first alone gives 98,304 bytes for a bound of 84,032."""
    from tasks.compile.plan import STORAGE_WORKSPACE, lower_bound

    storages = [Storage(0, 32768, 5, 9), Storage(1, 32768, 8, 12), Storage(2, 32768, 11, 15),
                Storage(3, 16384, 14, 18), Storage(4, 16384, 17, 22), Storage(9, 13888, 6, 6, kind=STORAGE_WORKSPACE),
                Storage(10, 34880, 15, 15, kind=STORAGE_WORKSPACE)]
    arena = plan_arena(storages)
    assert_valid(storages, arena)
    assert arena <= 1.05 * lower_bound(storages) == 1.05 * 84032
