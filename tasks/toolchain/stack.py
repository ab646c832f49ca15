"""Worst-case stack of a bare-metal program, at build time: each function's frame and the call graph.

A frame is what `-fstack-usage` wrote for the C we compile (its `.su` files), else what the disassembly of the
linked program shows (TVM's LLVM objects, newlib, libgcc have no `.su`). The call graph is the disassembly's:
`bl` calls, and branches out of a function (tail calls). The bound of a function is its frame plus the largest
bound of what it calls. Recursion, an indirect call, a dynamic frame or a stack adjustment this module does not
know make the bound unbounded, with the reason: never guessed.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import CrtforgeError
from tasks.toolchain.callees import ReadOnlyMemory, State, flash_image, known_registers
from tasks.toolchain.thumb import (Insn, base, branch_target, call_target, is_indirect, operands, parse_objdump,
                                   reg_list)


class StackError(CrtforgeError):
    """objdump failed on the program: names the program and the tool."""


@dataclass(frozen=True)
class Function:
    name: str
    start: int
    end: int  # one past the last byte


@dataclass(frozen=True)
class FunctionFacts:
    """What the disassembly (and -fstack-usage) says of one function."""
    name: str
    frame: int  # bytes
    calls: tuple[int, ...]  # start addresses of the functions it calls or tail-calls
    # why its frame, or a call, is not known ("indirect call in f at 0x1234: blx r3"); None when all is known
    unbounded: str | None = None


@dataclass(frozen=True)
class StackBound:
    root: str
    bytes: int | None  # None when unbounded
    unbounded: str | None  # the reason, naming the function and the call
    path: tuple[str, ...]  # the deepest chain from the root (to the unbounded function when unbounded)
    frames: tuple[int, ...]  # the frame of each function on the path, bytes

    def as_json(self) -> dict[str, object]:
        return {"root": self.root, "bytes": self.bytes, "unbounded": self.unbounded, "path": list(self.path),
                "frames": list(self.frames)}


# --- reading -------------------------------------------------------------------------------------------------

def elf_functions(elf: Path) -> list[Function]:
    """The program's functions from its symbol table (Thumb bit cleared), one name per address: a global name
    before a local one, then the first alphabetically. A function with no size ends where the next begins."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    names: dict[int, tuple[bool, str]] = {}  # (local, name) of the name kept
    sizes: dict[int, int] = {}
    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if not isinstance(sec, SymbolTableSection):
                continue
            for sym in sec.iter_symbols():
                if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                start = sym["st_value"] & ~1
                key = (sym["st_info"]["bind"] != "STB_GLOBAL", sym.name)
                names[start] = min(names.get(start, key), key)
                sizes[start] = max(sizes.get(start, 0), sym["st_size"])
    starts = sorted(names)
    ends = [start + sizes[start] if sizes[start] else nxt for start, nxt in zip(starts, [*starts[1:], starts[-1]])]
    return [Function(names[start][1], start, end) for start, end in zip(starts, ends)]


def disassemble(objdump: str, elf: Path) -> str:
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(elf)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"{objdump} -d failed on {elf}: {proc.stderr.strip()[:500]}", elf, "",
                         "check the toolchain's objdump (the `objdump` key of its toolchains/*.toml)")
    return proc.stdout


_SU_LINE = re.compile(r"^(?P<where>.*):(?P<name>[^:\s]+)\t(?P<bytes>\d+)\t(?P<kind>[a-z,]+)$")


def read_stack_usage(su_files: list[Path]) -> dict[str, int | None]:
    """Frame bytes per function from -fstack-usage files; None for a dynamic (unbounded) frame. GCC's figure
    counts the pushed registers too. A name in two files (static functions) keeps the larger frame."""
    frames: dict[str, int | None] = {}
    for su in su_files:
        for line in su.read_text().splitlines():
            m = _SU_LINE.match(line.strip())
            if not m:
                continue
            name, kind = m.group("name"), m.group("kind").split(",")
            size = None if "dynamic" in kind and "bounded" not in kind else int(m.group("bytes"))
            if name in frames:
                old = frames[name]
                size = None if old is None or size is None else max(old, size)
            frames[name] = size
    return frames


# --- one function ----------------------------------------------------------------------------------------

_IMM = re.compile(r"#(-?\d+)")
_PRE_DEC = re.compile(r"\[sp, #-(\d+)\]!")


def _sp_by_register(insn: Insn) -> bool:
    ops = operands(insn)
    return base(insn.mnemonic) in ("sub", "subw") and ops[:1] == ["sp"] and not _IMM.search(ops[-1])


def _sp_decrement(insns: list[Insn], i: int, known: State) -> int | str:
    """Bytes instruction `i` takes from the stack (0 when it takes none or gives back), or why it is not
    known; `known`: the registers known before it."""
    insn = insns[i]
    mn, ops = base(insn.mnemonic), operands(insn)
    if mn == "push" or (mn in ("stmdb", "stmfd") and ops and ops[0] == "sp!"):
        return 4 * len(reg_list(insn))
    if mn == "vpush" or (mn == "vstmdb" and ops and ops[0] == "sp!"):
        regs = reg_list(insn)
        return len(regs) * (8 if regs[0].startswith("d") else 4)
    pre = _PRE_DEC.search(insn.operands)
    if pre:
        return int(pre.group(1))
    if mn.startswith(("st", "vst")) and "sp!" not in insn.operands:
        return 0  # a store at sp (stmia sp, {...}), not a move of it
    writes_sp = bool(ops) and ops[0] == "sp" and mn not in ("cmp", "cmn", "tst", "teq")
    if not writes_sp:
        return 0
    if mn in ("pop", "vpop", "ldm", "ldmia", "ldmfd", "vldmia") or mn in ("add", "addw") and _IMM.search(ops[-1]):
        return 0
    if mn in ("sub", "subw"):
        imm = _IMM.search(ops[-1])
        if imm:
            return int(imm.group(1))
        value = known.get(ops[-1])
        return value if value is not None else f"dynamic frame: {insn.mnemonic} {insn.operands}"
    if mn == "mov" and len(ops) == 2:
        return _mov_sp(insns, i, ops[1])
    return f"unknown stack adjustment: {insn.mnemonic} {insn.operands}"


def _mov_sp(insns: list[Insn], i: int, reg: str) -> int | str:
    """`mov sp, rX`: a realignment (rX = sp with its low bits cleared by bfc: up to 2^k - 1 bytes more), sp
    minus a constant, or else the restore of a saved sp (an epilogue, which takes nothing)."""
    for prev in reversed(insns[:i]):
        ops = operands(prev)
        if not ops or ops[0] != reg:
            continue
        mn = base(prev.mnemonic)
        if mn == "bfc":
            return (1 << int(_IMM.findall(prev.operands)[-1])) - 1
        if mn in ("sub", "subw") and len(ops) == 3 and ops[1] == "sp":
            imm = _IMM.search(ops[2])
            return int(imm.group(1)) if imm else f"dynamic frame: {prev.mnemonic} {prev.operands}"
        return 0
    return 0


def function_facts(fn: Function, insns: list[Insn], su_frames: dict[str, int | None], start_of: dict[int, int],
                   memory: ReadOnlyMemory) -> FunctionFacts:
    """The frame and calls of `fn` (its instructions `insns`); `start_of` maps any address inside a function
    to that function's start. The frame from the disassembly is the sum of every decrement of sp in the body:
    compiler-generated code takes its frame once, in the prologue, so the sum is that frame or more. An
    indirect call is a call where flash decides its callee (tasks/toolchain/callees.py)."""
    unbounded = None
    frame = 0
    calls: list[int] = []
    needs_values = any(is_indirect(insn) or _sp_by_register(insn) for insn in insns)
    known = known_registers(insns, fn.start, fn.end, memory) if needs_values else {}
    for i, insn in enumerate(insns):
        before = known.get(insn.address, {})
        taken = _sp_decrement(insns, i, before)
        if isinstance(taken, str):
            unbounded = unbounded or f"{taken} in {fn.name} at {insn.address:#x}"
        else:
            frame += taken
        callee = call_target(insn)
        ops = operands(insn)
        if callee is None and base(insn.mnemonic) == "blx" and ops and ops[0] in before:
            callee = before[ops[0]] & ~1
        target = branch_target(insn)
        if callee is None and target is not None and not fn.start <= target < fn.end:
            callee = target  # a tail call
        if callee is None:
            if is_indirect(insn):
                unbounded = unbounded or (f"indirect call in {fn.name} at {insn.address:#x}: "
                                          f"{insn.mnemonic} {insn.operands}")
            continue
        if callee not in start_of:
            unbounded = unbounded or f"call in {fn.name} at {insn.address:#x} to {callee:#x}, outside any function"
        elif start_of[callee] not in calls:
            calls.append(start_of[callee])
    if fn.name in su_frames:
        su = su_frames[fn.name]
        if su is None:
            unbounded = unbounded or f"dynamic frame in {fn.name} (-fstack-usage)"
        else:
            frame = su
    return FunctionFacts(fn.name, frame, tuple(calls), unbounded)


def call_graph(insns: list[Insn], functions: list[Function], su_frames: dict[str, int | None],
               memory: ReadOnlyMemory = ReadOnlyMemory(())) -> dict[int, FunctionFacts]:
    """Facts of every function, by start address."""
    by_function: dict[int, list[Insn]] = {fn.start: [] for fn in functions}
    ordered = sorted(functions, key=lambda fn: fn.start)
    start_of: dict[int, int] = {}
    j = 0
    for insn in insns:
        while j < len(ordered) and insn.address >= ordered[j].end:
            j += 1
        if j < len(ordered) and ordered[j].start <= insn.address:
            by_function[ordered[j].start].append(insn)
    for fn in ordered:
        for insn in by_function[fn.start]:
            start_of[insn.address] = fn.start
        start_of[fn.start] = fn.start
    return {fn.start: function_facts(fn, by_function[fn.start], su_frames, start_of, memory) for fn in ordered}


# --- the bound -------------------------------------------------------------------------------------------

def stack_bound(graph: dict[int, FunctionFacts], root: str) -> StackBound:
    """The worst-case stack of `root`: its frame plus the deepest of its callees', recursively. The first
    recursion or unknown found on the way (depth first, in call order) makes it unbounded."""
    by_name = {f.name: addr for addr, f in graph.items()}
    if root not in by_name:
        return StackBound(root, None, f"no function {root} in the program", (root,), ())
    memo: dict[int, tuple[int, tuple[int, ...]]] = {}

    class Unbounded(Exception):
        def __init__(self, reason: str, chain: tuple[int, ...]):
            self.reason, self.chain = reason, chain

    def visit(addr: int, chain: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        if addr in memo:
            return memo[addr]
        facts = graph[addr]
        chain = (*chain, addr)
        if facts.unbounded:
            raise Unbounded(facts.unbounded, chain)
        best: tuple[int, tuple[int, ...]] = (0, ())
        for callee in facts.calls:
            if callee in chain:
                cycle = chain[chain.index(callee):] + (callee,)
                raise Unbounded("recursion: " + " -> ".join(graph[a].name for a in cycle), chain)
            depth, path = visit(callee, chain)
            if depth > best[0]:
                best = (depth, path)
        memo[addr] = (facts.frame + best[0], (addr, *best[1]))
        return memo[addr]

    try:
        total, path = visit(by_name[root], ())
    except Unbounded as u:
        return StackBound(root, None, u.reason, tuple(graph[a].name for a in u.chain),
                          tuple(graph[a].frame for a in u.chain))
    return StackBound(root, total, None, tuple(graph[a].name for a in path), tuple(graph[a].frame for a in path))


def worst(bounds: list[StackBound]) -> StackBound:
    """The root that needs most: an unbounded one first."""
    return max(bounds, key=lambda b: (b.bytes is None, b.bytes or 0))


def program_stack_bound(objdump: str, elf: Path, su_files: list[Path], roots: tuple[str, ...],
                        flash: tuple[int, int]) -> StackBound:
    """The worst of `roots` in the linked program `elf`, whose board's flash is (origin, size)."""
    graph = call_graph(parse_objdump(disassemble(objdump, elf)), elf_functions(elf), read_stack_usage(su_files),
                       flash_image(elf, *flash))
    return worst([stack_bound(graph, root) for root in roots])
