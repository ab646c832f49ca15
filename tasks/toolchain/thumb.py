"""Thumb-2 instructions as `objdump -d --no-show-raw-insn` prints them: what the worst-case stack reads of them
(tasks/toolchain/stack.py, tasks/toolchain/callees.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Insn:
    address: int
    mnemonic: str  # "push", "sub.w", "bl", "beq.n"
    operands: str  # as objdump writes them, its comment ("@ ...") removed


_LINE = re.compile(r"^\s*([0-9a-f]+):\t([^\t]+)\t?(.*)$")


def parse_objdump(text: str) -> list[Insn]:
    """Instructions of `objdump -d --no-show-raw-insn` output; data words (.word) are left out."""
    insns = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or m.group(2).startswith("."):
            continue
        insns.append(Insn(int(m.group(1), 16), m.group(2).strip(), m.group(3).split("@")[0].strip()))
    return insns


CORE_REGS = frozenset({"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "sl", "fp", "ip", "sp", "lr",
                       "pc"})
CALLER_SAVED = frozenset({"r0", "r1", "r2", "r3", "ip", "lr"})  # what a call may change (AAPCS)
REGLIST = re.compile(r"\{([^}]*)\}")
_CONDITIONS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")
# The mnemonics read here; inside an IT block objdump appends the condition to them ("popeq", "blxne").
_BASES = frozenset({"b", "bl", "blx", "bx", "cbz", "cbnz", "tbb", "tbh", "push", "pop", "vpush", "vpop", "stmdb",
                    "stmfd", "stmia", "stm", "vstmdb", "ldm", "ldmia", "ldmfd", "vldmia", "ldr", "mov", "movw", "movt",
                    "add", "addw", "sub", "subw", "bfc"})
_TARGET = re.compile(r"^([0-9a-f]+) <|, ([0-9a-f]+) <")


def base(mnemonic: str) -> str:
    """The mnemonic without its width (.n, .w) and, inside an IT block, its condition: "bne.n" -> "b",
    "popeq" -> "pop"."""
    mn = mnemonic.split(".")[0]
    if mn not in _BASES and mn[-2:] in _CONDITIONS and mn[:-2] in _BASES:
        return mn[:-2]
    return mn


def conditional(insn: Insn) -> bool:
    """Inside an IT block: it may not happen. (A conditional branch, bne, is a branch with two ways out.)"""
    return base(insn.mnemonic) != insn.mnemonic.split(".")[0]


def operands(insn: Insn) -> list[str]:
    """The operands, a {list} or an [address] as one."""
    return [o.strip() for o in re.split(r",\s*(?![^{\[]*[}\]])", insn.operands) if o.strip()]


def reg_list(insn: Insn) -> list[str]:
    """The registers of a {list}, ranges ("d8-d15") spelt out."""
    regs = []
    for item in REGLIST.search(insn.operands).group(1).split(","):
        item = item.strip()
        if "-" in item:
            prefix = re.match(r"\D+", item).group(0)
            lo, hi = (int(x.strip()[len(prefix):]) for x in item.split("-"))
            regs += [f"{prefix}{n}" for n in range(lo, hi + 1)]
        else:
            regs.append(item)
    return regs


def call_target(insn: Insn) -> int | None:
    """The address a direct call (bl, blx <address>) calls."""
    m = _TARGET.search(insn.operands)
    return int(m.group(1) or m.group(2), 16) if base(insn.mnemonic) in ("bl", "blx") and m else None


def branch_target(insn: Insn) -> int | None:
    """The address a direct branch (b, bne.n, cbz ...) goes to."""
    m = _TARGET.search(insn.operands)
    return int(m.group(1) or m.group(2), 16) if base(insn.mnemonic) in ("b", "cbz", "cbnz") and m else None


def is_return(insn: Insn) -> bool:
    """bx lr, mov pc, lr, or pc popped or loaded from the stack."""
    mn, ops = base(insn.mnemonic), operands(insn)
    if mn in ("bx", "mov"):
        return ops[-1:] == ["lr"] and (mn == "bx" or ops[0] == "pc")
    if mn in ("pop", "ldm", "ldmia", "ldmfd"):
        return "pc" in reg_list(insn) and (mn == "pop" or ops[0] == "sp!")
    return mn == "ldr" and ops[:1] == ["pc"] and insn.operands.startswith("pc, [sp], #")


def is_indirect(insn: Insn) -> bool:
    """A call or jump through a register or memory (not a return, not a table branch within the function)."""
    mn, ops = base(insn.mnemonic), operands(insn)
    if not ops or is_return(insn):
        return False
    if mn in ("blx", "bx"):
        return ops[0] in CORE_REGS
    if mn in ("pop", "ldm", "ldmia", "ldmfd"):
        return "pc" in reg_list(insn)
    return mn in ("ldr", "mov", "add") and ops[0] == "pc"
