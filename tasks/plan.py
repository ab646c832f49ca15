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


STORAGE_TENSORS = "tensors"  # holds Relax tensors
STORAGE_WORKSPACE = "workspace"  # one kernel call's workspace (TVMBackendAllocWorkspace), alive for that call only


@dataclass
class Storage:
    id: int
    nbytes: int
    first: int  # step at which it is allocated
    last: int  # last step that touches a tensor in it
    offset: int = -1  # byte offset in the arena, set by plan_arena
    kind: str = STORAGE_TENSORS


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plan":
        return Plan(
            inputs=list(d["inputs"]), outputs=list(d["outputs"]),
            tensors=[Tensor(**{**t, "shape": tuple(t["shape"])}) for t in d["tensors"]],
            storages=[Storage(**s) for s in d["storages"]],
            constants=[Constant(**{**c, "shape": tuple(c["shape"])}) for c in d["constants"]],
            calls=[Call(**c) for c in d["calls"]], arena_bytes=d["arena_bytes"], kernels=list(d["kernels"]))


def _align(n: int) -> int:
    return (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN


def plan_arena(storages: list[Storage]) -> int:
    """Give each storage an arena offset so that storages alive at the same step never overlap.

    Greedy first fit, largest first: returns the arena size in bytes.
    """
    placed: list[Storage] = []
    for s in sorted(storages, key=lambda s: (-s.nbytes, s.id)):
        offset = 0
        live = [p for p in placed if p.first <= s.last and s.first <= p.last]
        for p in sorted(live, key=lambda p: p.offset):
            if offset + s.nbytes <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.nbytes))
        s.offset = offset
        placed.append(s)
    return _align(max((s.offset + s.nbytes for s in storages), default=0))
