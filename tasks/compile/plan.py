"""The straight-line execution plan that the build stage extracts and the codegen stage emits as C.

It is plain data (JSON on disk): which tensors exist, where each one's bytes live (a model input, the
arena, or a constant), and the kernel calls in order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ARENA_ALIGN = 64  # kernels require 64-byte aligned tensor data

# Where a tensor's bytes live.
HOME_INPUT = "input"  # index: which model input
HOME_ARENA = "arena"  # index: which storage; offset: bytes into it
HOME_CONST = "const"  # index: which constant


STORAGE_TENSORS = "tensors"  # one Relax tensor and its reshapes, in the arena
STORAGE_WORKSPACE = "workspace"  # one kernel call's workspace (TVMBackendAllocWorkspace), alive for that call only
STORAGE_OUTPUT = "output"  # a model output, computed straight into the caller's buffer: not in the arena
IN_ARENA = (STORAGE_TENSORS, STORAGE_WORKSPACE)


@dataclass
class Storage:
    """A buffer: one tensor's bytes (shared by its reshapes), or one call's workspace."""
    id: int
    nbytes: int
    first: int  # step at which it is allocated
    last: int  # last step that touches it
    offset: int = -1  # byte offset in the arena, set by plan_arena
    kind: str = STORAGE_TENSORS
    output: int | None = None  # for STORAGE_OUTPUT: which model output


@dataclass
class Tensor:
    id: int
    name: str  # the Relax variable it came from, for comments
    shape: tuple[int, ...]
    dtype: str
    home: str
    index: int
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Call:
    kernel: str  # global symbol of the PrimFunc (C symbol is __tvm_ffi_<kernel>)
    args: list[int]  # tensor ids, outputs last (destination passing)
    binding: str  # the Relax binding it came from, for comments
    step: int  # position in the lowered main, the clock of storage lifetimes
    workspace: int | None = None  # storage id of its workspace, if the kernel asks for one
    source_ops: list[str] = field(default_factory=list)  # the source model's ops it computes (frontend/sources.py)


@dataclass
class Constant:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Plan:
    inputs: list[int]  # tensor ids, in model input order
    outputs: list[int]  # tensor ids, in model output order
    tensors: list[Tensor]
    storages: list[Storage]
    constants: list[Constant]
    calls: list[Call]
    arena_bytes: int = 0
    kernels: list[str] = field(default_factory=list)  # every kernel symbol, sorted
    arena_lower_bound: int = 0  # the most bytes of arena buffers alive at one step: no plan can do better
    ops: "OpCounts | None" = None  # how the calls compute: integer kernels, TVM's float or integer kernels
    tuning: "TuningUse | None" = None  # which kernels tuning records scheduled (targets with `tune`)
    # The output tensors of each source op the calls name, by their names in the source model (for the bisector).
    source_tensors: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def call_outputs(self) -> list[list[int]]:
        """The tensors each call writes: its arguments in arena buffers (or the caller's output buffers) that no
        earlier call touched. Every tensor has a buffer of its own, so a buffer's first user computes it."""
        seen: set[int] = set()
        out = []
        for c in self.calls:
            arena = [a for a in c.args if self.tensors[a].home == HOME_ARENA]
            out.append([a for a in arena if self.tensors[a].index not in seen])
            seen |= {self.tensors[a].index for a in arena}
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plan":
        return Plan(
            inputs=list(d["inputs"]), outputs=list(d["outputs"]),
            tensors=[Tensor(**{**t, "shape": tuple(t["shape"])}) for t in d["tensors"]],
            storages=[Storage(**s) for s in d["storages"]],
            constants=[Constant(**{**c, "shape": tuple(c["shape"])}) for c in d["constants"]],
            calls=[Call(**c) for c in d["calls"]], arena_bytes=d["arena_bytes"], kernels=list(d["kernels"]),
            arena_lower_bound=d["arena_lower_bound"], ops=OpCounts(**d["ops"]) if d.get("ops") else None,
            tuning=TuningUse(**d["tuning"]) if d.get("tuning") else None, source_tensors=d["source_tensors"])


@dataclass
class TuningUse:
    """What the build took from tuning records (TVM's kernel names, before the model's prefix)."""
    records: str  # the database folder
    tuned: list[str]  # scheduled by their best record
    default: list[str]  # tuned, but TVM's default schedule stayed best
    missing: list[str]  # not in the records at all: tuned for another version of the model


@dataclass
class OpCounts:
    """What each call computes with, for the report: an int8 model should have no `tvm_float` entry."""
    integer: dict[str, int] = field(default_factory=dict)    # the model's op (e.g. CONV_2D) → calls to crtforge_int8
    tvm_float: list[str] = field(default_factory=list)       # TVM kernels reading or writing float tensors
    tvm_integer: list[str] = field(default_factory=list)     # TVM kernels on integer tensors only
    other: list[str] = field(default_factory=list)           # other external functions (offload)


def _align(n: int) -> int:
    return (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN


WORKSPACE_ALIGN = 16  # what crt's external kernels ask TVMBackendAllocWorkspace for


def workspace_size(nbytes: int) -> int:
    """An external kernel's scratch in bytes, padded to WORKSPACE_ALIGN (the size its C code asks for)."""
    return (nbytes + WORKSPACE_ALIGN - 1) // WORKSPACE_ALIGN * WORKSPACE_ALIGN


def lower_bound(storages: list[Storage]) -> int:
    """The most bytes of arena buffers alive at any one step (alignment aside)."""
    arena = [s for s in storages if s.kind in IN_ARENA]
    steps = sorted({s.first for s in arena})  # the peak is reached where some buffer starts
    return max((sum(s.nbytes for s in arena if s.first <= t <= s.last) for t in steps), default=0)


def _first_fit(buffers: list[Storage]) -> dict[int, int]:
    """Offsets for `buffers` placed in this order, each at the lowest offset free for its whole lifetime."""
    offsets: dict[int, int] = {}
    placed: list[Storage] = []
    for s in buffers:
        offset = 0
        live = [p for p in placed if p.first <= s.last and s.first <= p.last]
        for p in sorted(live, key=lambda p: offsets[p.id]):
            if offset + s.nbytes <= offsets[p.id]:
                break
            offset = max(offset, _align(offsets[p.id] + p.nbytes))
        offsets[s.id] = offset
        placed.append(s)
    return offsets


# Placement orders for first fit; none is best for every plan, so each is tried.
_ORDERS = (
    lambda s: (-s.nbytes, s.id),  # largest first
    lambda s: (s.first, -s.nbytes, s.id),  # in order of allocation
    lambda s: (-(s.last - s.first), -s.nbytes, s.id),  # longest-lived first
    lambda s: (-s.nbytes * (s.last - s.first + 1), s.id),  # most bytes x steps first
)


def plan_arena(storages: list[Storage]) -> int:
    """Give each arena buffer an offset so that buffers alive at the same step never overlap.

    First fit in a few orders; the smallest arena wins (ties: the first order). Returns its size in bytes.
    """
    buffers = [s for s in storages if s.kind in IN_ARENA]
    best: tuple[int, dict[int, int]] = (-1, {})
    for order in _ORDERS:
        offsets = _first_fit(sorted(buffers, key=order))
        size = _align(max((offsets[s.id] + s.nbytes for s in buffers), default=0))
        if best[0] < 0 or size < best[0]:
            best = (size, offsets)
    for s in buffers:
        s.offset = best[1][s.id]
    return max(best[0], 0)
