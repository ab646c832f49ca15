"""The worst-case stack: frames and calls read from small disassemblies, the bound, and what makes it unbounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.toolchain.callees import ReadOnlyMemory
from tasks.toolchain.stack import Function, call_graph, parse_objdump, read_stack_usage, stack_bound


def program(*functions: tuple[str, int, list[str]]) -> tuple[str, list[Function]]:
    """objdump -d --no-show-raw-insn text for functions given as (name, start, ["mnemonic\\toperands", ...]),
    two bytes an instruction, and their table."""
    lines, table = [], []
    for name, start, body in functions:
        lines.append(f"\n{start:08x} <{name}>:")
        for i, insn in enumerate(body):
            lines.append(f"    {start + 2 * i:4x}:\t{insn}")
        table.append(Function(name, start, start + 2 * len(body)))
    return "\n".join(lines) + "\n", table


def bound(text_and_table: tuple[str, list[Function]], root: str, su: dict[str, int | None] | None = None,
          flash: dict[int, int] | None = None):
    """The bound of `root`; `flash` holds words (address: value) the program reads from flash."""
    text, table = text_and_table
    memory = ReadOnlyMemory(tuple((a, v.to_bytes(4, "little")) for a, v in (flash or {}).items()))
    return stack_bound(call_graph(parse_objdump(text), table, su or {}, memory), root)


def test_frames_sum_every_decrement_of_sp():
    b = bound(program(("f", 0x100, ["push\t{r4, r5, r6, r7, lr}",  # 20
                                    "vpush\t{d8-d15}",  # 64
                                    "sub\tsp, #20\t@ 0x14",
                                    "sub.w\tsp, sp, #1024\t@ 0x400",
                                    "subw\tsp, sp, #3000\t@ 0xbb8",
                                    "str.w\tr8, [sp, #-4]!",
                                    "vstmdb\tsp!, {s16-s17}",  # 8
                                    "stmdb\tsp!, {r4, r5, r6, r7, r8, r9, sl, fp, lr}",  # 36
                                    "str\tr0, [sp, #4]",  # a store, no move
                                    "stmia.w\tsp, {r0, r1, r7}",
                                    "add\tsp, #20",
                                    "pop\t{r4, r5, r6, r7, pc}"])), "f")
    assert (b.bytes, b.unbounded, b.path) == (20 + 64 + 20 + 1024 + 3000 + 4 + 8 + 36, None, ("f",))


def test_sub_sp_by_a_register_is_known_only_from_a_constant():
    known = bound(program(("f", 0x100, ["push\t{r7, lr}", "movw\tr3, #4464\t@ 0x1170", "movt\tr3, #1",
                                        "sub\tsp, r3", "pop\t{r7, pc}"])), "f")
    assert known.bytes == 8 + 0x1_1170
    dynamic = bound(program(("g", 0x100, ["push\t{r7, lr}", "ldr\tr3, [r0, #0]", "sub\tsp, r3", "pop\t{r7, pc}"])),
                    "g")
    assert dynamic.bytes is None and dynamic.unbounded == "dynamic frame: sub sp, r3 in g at 0x104"


def test_a_realigned_frame_counts_the_alignment():
    b = bound(program(("f", 0x100, ["push\t{r4, r7, lr}", "sub.w\tsp, sp, #1688\t@ 0x698", "mov\tr4, sp",
                                    "bfc\tr4, #0, #4", "mov\tsp, r4", "mov\tsp, r7", "pop\t{r4, r7, pc}"])), "f")
    assert b.bytes == 12 + 1688 + 15  # the epilogue's mov sp, r7 restores: nothing more


def test_the_deepest_chain_with_calls_and_a_tail_call():
    b = bound(program(("root", 0x100, ["push\t{r4, lr}", "bl\t200 <small>", "bl\t300 <big>", "pop\t{r4, pc}"]),
                      ("small", 0x200, ["push\t{r4, r5, r6, lr}", "pop\t{r4, r5, r6, pc}"]),
                      # a branch out of the function: the callee's stack adds to this frame
                      ("big", 0x300, ["push\t{r7, lr}", "sub\tsp, #64", "beq.n\t30a <big+0xa>", "add\tsp, #64",
                                      "b.w\t400 <leaf>", "pop\t{r7, pc}"]),
                      ("leaf", 0x400, ["sub\tsp, #8", "add\tsp, #8", "bx\tlr"])), "root")
    assert (b.bytes, b.path, b.frames) == (8 + 72 + 8, ("root", "big", "leaf"), (8, 72, 8))


def test_recursion_is_unbounded_and_names_the_cycle():
    b = bound(program(("root", 0x100, ["push\t{r4, lr}", "bl\t200 <a>", "pop\t{r4, pc}"]),
                      ("a", 0x200, ["push\t{r4, lr}", "cbz\tr0, 204 <a+0x4>", "bl\t300 <b>", "pop\t{r4, pc}"]),
                      ("b", 0x300, ["push\t{r4, lr}", "pop\t{r4, lr}", "b.w\t200 <a>"])), "root")
    assert b.bytes is None and b.unbounded == "recursion: a -> b -> a"
    assert b.path == ("root", "a", "b")


@pytest.mark.parametrize("insn", ["blx\tr3", "bx\tr2", "blxeq\tr7", "mov\tpc, r1", "ldr.w\tpc, [r3, #4]",
                                  "ldmia.w\tr0, {r4, pc}"])
def test_an_indirect_call_is_unbounded_and_names_the_function(insn):
    b = bound(program(("root", 0x100, ["push\t{r4, lr}", "bl\t200 <kernel>", "pop\t{r4, pc}"]),
                      ("kernel", 0x200, ["push\t{r4, lr}", "ldr\tr3, [r0, #0]", insn, "pop\t{r4, pc}"])), "root")
    assert b.bytes is None and b.unbounded == f"indirect call in kernel at 0x204: {insn.replace(chr(9), ' ')}"
    assert b.path == ("root", "kernel")


@pytest.mark.parametrize("ret", ["bx\tlr", "pop\t{r4, pc}", "ldmia.w\tsp!, {r4, r5, pc}", "ldr.w\tpc, [sp], #4",
                                 "popne\t{r4, pc}", "mov\tpc, lr"])
def test_returns_are_not_indirect_calls(ret):
    assert bound(program(("f", 0x100, ["push\t{r4, lr}", ret])), "f").bytes == 8


def test_an_unknown_stack_adjustment_is_unbounded():
    b = bound(program(("f", 0x100, ["push\t{r4, lr}", "add.w\tsp, r4, r5", "pop\t{r4, pc}"])), "f")
    assert b.unbounded == "unknown stack adjustment: add.w sp, r4, r5 in f at 0x102"


def test_stack_usage_files_give_the_frame_and_dynamic_frames_are_unbounded(tmp_path: Path):
    (tmp_path / "a.su").write_text("crt.c:12:6:f\t40\tstatic\nexecutor.c:3:5:g\t24\tdynamic,bounded\n"
                                   "x.c:9:5:h\t16\tdynamic\n")
    (tmp_path / "b.su").write_text("other.c:1:13:f\t56\tstatic\n")  # a static function of the same name
    su = read_stack_usage([tmp_path / "a.su", tmp_path / "b.su"])
    assert su == {"f": 56, "g": 24, "h": None}
    text = program(("f", 0x100, ["push\t{r4, lr}", "bl\t200 <g>", "pop\t{r4, pc}"]),
                   ("g", 0x200, ["push\t{r4, lr}", "pop\t{r4, pc}"]),
                   ("h", 0x300, ["push\t{r4, lr}", "pop\t{r4, pc}"]))
    assert bound(text, "f", su).bytes == 56 + 24
    assert bound(text, "h", su).unbounded == "dynamic frame in h (-fstack-usage)"


def test_a_root_not_in_the_program():
    assert bound(program(("f", 0x100, ["bx\tlr"])), "g").unbounded == "no function g in the program"


# A TVM LLVM kernel's call of the workspace allocator: the GOT slot's address pc-relative from a literal, the
# pointer's address from the GOT, the function from the pointer.
WORKSPACE_CALL = program(("root", 0x100, ["push\t{r4, lr}", "bl\t200 <kernel>", "pop\t{r4, pc}"]),
                         ("kernel", 0x200, ["push\t{r4, r6, r7, lr}",
                                            "ldr\tr3, [pc, #8]\t@ (20c <kernel+0xc>)",  # the literal at 0x20c
                                            "add\tr3, pc",  # + 0x208
                                            "ldr\tr2, [r3, #0]",  # the GOT slot
                                            "ldr\tr6, [r2, #0]",  # the pointer
                                            "blx\tr6",
                                            "cbz\tr0, 20a <kernel+0xa>",  # a loop: r6 is still the pointer's
                                            "pop\t{r4, r6, r7, pc}"]),
                         ("alloc", 0x300, ["push\t{r4, r5, r6, r7, lr}", "sub\tsp, #40", "add\tsp, #40",
                                           "pop\t{r4, r5, r6, r7, pc}"]))
GOT, POINTER = 0x1000, 0x1100


def test_an_indirect_call_through_pointers_in_flash_is_a_call():
    b = bound(WORKSPACE_CALL, "root", flash={0x20c: GOT - 0x208, GOT: POINTER, POINTER: 0x300 | 1})
    assert (b.bytes, b.path) == (8 + 16 + 60, ("root", "kernel", "alloc"))


def test_an_indirect_call_through_a_pointer_in_ram_stays_unbounded():
    b = bound(WORKSPACE_CALL, "root", flash={0x20c: GOT - 0x208, GOT: POINTER})  # the pointer is not in flash
    assert b.bytes is None and b.unbounded == "indirect call in kernel at 0x20a: blx r6"


@pytest.mark.parametrize("other, resolved", [(0x301, True), (0x401, False)])
def test_a_callee_known_on_only_one_path_is_unknown(other, resolved):
    text = program(("f", 0x100, ["push\t{r4, r6, r7, lr}", "movw\tr6, #769\t@ 0x301", "cbz\tr0, 108 <f+0x8>",
                                 f"movw\tr6, #{other}", "blx\tr6", "pop\t{r4, r6, r7, pc}"]),
                   ("g", 0x300, ["push\t{r4, lr}", "pop\t{r4, pc}"]), ("h", 0x400, ["bx\tlr"]))
    b = bound(text, "f")
    assert b.bytes == (16 + 8 if resolved else None)
    assert resolved or b.unbounded == "indirect call in f at 0x108: blx r6"
