"""Register values that flash decides, for the worst-case stack (tasks/toolchain/stack.py): the callee of an
indirect call, the bytes of `sub sp, rX`.

TVM's LLVM kernels are position-independent: they call the workspace functions through pointers they reach via
the GOT (`ldr r3, [pc, #N]; add r3, pc; ldr r6, [r3]; ldr r7, [r6]; blx r7`). When both the GOT and the pointer
live in flash, nothing can change them, so the callee is known: a constant propagation over the function's
control flow (registers only; a value read from memory is known only where that memory is read-only) finds it.
Anything it cannot follow leaves the call unknown, and the bound unbounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tasks.toolchain.thumb import (CALLER_SAVED, CORE_REGS, Insn, base, branch_target, conditional, is_indirect,
                                   is_return, operands, reg_list)


@dataclass(frozen=True)
class ReadOnlyMemory:
    """What the program holds in memory nothing writes at run time (a bare-metal board's flash): (address,
    bytes) of each section there."""
    segments: tuple[tuple[int, bytes], ...]

    def word(self, address: int) -> int | None:
        for start, data in self.segments:
            if start <= address and address + 4 <= start + len(data):
                return int.from_bytes(data[address - start:address - start + 4], "little")
        return None


def flash_image(elf: Path, origin: int, size: int) -> ReadOnlyMemory:
    """The program's sections in flash [origin, origin + size): by address, not by their ELF flags (const data
    with relocations, and the GOT, are writable in the ELF yet placed in flash)."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    segments = []
    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            addr = sec["sh_addr"]
            if (sec["sh_flags"] & SH_FLAGS.SHF_ALLOC and sec["sh_type"] == "SHT_PROGBITS"
                    and origin <= addr and addr + sec["sh_size"] <= origin + size):
                segments.append((addr, sec.data()))
    return ReadOnlyMemory(tuple(segments))


_IMM = re.compile(r"#(-?\d+)")
_LOAD = re.compile(r"^\[(\w+)(?:, #(-?\d+))?\]$")  # [rY] or [rY, #imm], no writeback
# Instructions that write no core register (besides a writeback base).
_NO_DEST = ("str", "stm", "push", "vst", "vpush", "cmp", "cmn", "tst", "teq", "it", "nop", "vcmp", "vmrs", "b",
            "cbz", "cbnz", "bx", "pld", "dmb", "dsb", "isb", "bkpt", "svc", "wfi", "wfe", "udf", "cpsi", "msr")
# rX! (ldm, stm), [rX, #N]! (pre-indexed), [rX], #N (post-indexed): the base register changes too
_WRITEBACK = re.compile(r"(\w+)!|\[(\w+), #-?\d+\]!|\[(\w+)\], #-?\d+$")
_TWO_DEST = ("ldrd", "ldrexd", "umull", "smull", "umlal", "smlal", "vmov")

State = dict[str, int]  # the registers whose value is known


def _written(insn: Insn) -> set[str]:
    mn, ops = base(insn.mnemonic), operands(insn)
    written = set()
    if mn in ("pop", "ldm", "ldmia", "ldmfd", "ldmdb"):
        written |= set(reg_list(insn))
    elif not mn.startswith(_NO_DEST) and ops:
        written.add(ops[0])
        if mn in _TWO_DEST and len(ops) > 1:
            written.add(ops[1])
    writeback = _WRITEBACK.search(insn.operands)
    if writeback:
        written.add(next(g for g in writeback.groups() if g))
    return written & CORE_REGS


def _step(insn: Insn, state: State, memory: ReadOnlyMemory) -> State:
    """The known registers after `insn`."""
    mn, ops = base(insn.mnemonic), operands(insn)
    if mn in ("bl", "blx"):
        return {r: v for r, v in state.items() if r not in CALLER_SAVED}
    new = {r: v for r, v in state.items() if r not in _written(insn)}
    if conditional(insn) or len(ops) < 2:
        return new
    dest, src = ops[0], ops[1]
    value = None
    load = _LOAD.match(ops[1]) if len(ops) == 2 else None
    if mn == "ldr" and load:
        offset = int(load.group(2) or 0)
        address = ((insn.address + 4) & ~3) + offset if load.group(1) == "pc" else (
            state[load.group(1)] + offset if load.group(1) in state else None)
        value = None if address is None else memory.word(address)
    elif mn == "add" and len(ops) == 2 and src == "pc" and dest in state:
        value = (state[dest] + insn.address + 4) & 0xFFFF_FFFF
    elif mn == "mov" and len(ops) == 2 and src in state:
        value = state[src]
    elif mn in ("mov", "movs", "movw") and len(ops) == 2 and _IMM.fullmatch(src):
        value = int(src[1:]) & 0xFFFF_FFFF
    elif mn == "movt" and dest in state and _IMM.fullmatch(src):
        value = (state[dest] & 0xFFFF) | (int(src[1:]) << 16)
    if value is not None and dest in CORE_REGS:
        new[dest] = value
    return new


def _blocks(insns: list[Insn], start: int, end: int) -> tuple[list[list[Insn]], dict[int, list[int]]] | None:
    """The function's basic blocks and each one's successors (indices), or None when its control flow leaves
    through a table or a register (tbb, tbh, bx rX): then nothing is followed."""
    leaders = {0}
    index = {insn.address: i for i, insn in enumerate(insns)}
    for i, insn in enumerate(insns):
        if base(insn.mnemonic) in ("tbb", "tbh") or is_indirect(insn) and base(insn.mnemonic) != "blx":
            return None
        target = branch_target(insn)
        if target is not None and start <= target < end:
            if target not in index:
                return None
            leaders.add(index[target])
        if target is not None or is_return(insn):
            leaders.add(i + 1)
    starts = sorted(x for x in leaders if x < len(insns))
    blocks = [insns[a:b] for a, b in zip(starts, [*starts[1:], len(insns)])]
    block_of = {insns[s].address: k for k, s in enumerate(starts)}
    successors: dict[int, list[int]] = {}
    for k, block in enumerate(blocks):
        last = block[-1]
        mn, target = base(last.mnemonic), branch_target(last)
        succ = []
        if target is not None and target in block_of:
            succ.append(block_of[target])
        unconditional = (mn == "b" and last.mnemonic.split(".")[0] == "b") or (is_return(last) and
                                                                               not conditional(last))
        if not unconditional and k + 1 < len(blocks):
            succ.append(k + 1)
        successors[k] = succ
    return blocks, successors


def known_registers(insns: list[Insn], start: int, end: int, memory: ReadOnlyMemory) -> dict[int, State]:
    """Address of each reachable instruction of the function → the registers whose value is the same on every
    path to it; empty when the control flow cannot be followed."""
    flow = _blocks(insns, start, end)
    if flow is None:
        return {}
    blocks, successors = flow
    entry: list[State | None] = [None] * len(blocks)
    entry[0] = {}  # the caller's registers: unknown
    work = [0]
    while work:
        k = work.pop()
        state = entry[k]
        assert state is not None
        for insn in blocks[k]:
            state = _step(insn, state, memory)
        for s in successors[k]:
            old = entry[s]
            joined = state if old is None else {r: v for r, v in old.items() if state.get(r) == v}
            if old is None or joined != old:
                entry[s] = joined
                work.append(s)
    known = {}
    for k, block in enumerate(blocks):
        state = entry[k]
        if state is None:
            continue  # unreachable
        for insn in block:
            known[insn.address] = state
            state = _step(insn, state, memory)
    return known
