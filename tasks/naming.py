"""The one authority for C symbols: names from pipeline.toml and from models become C identifiers here, and every
symbol, macro and include guard generated for a model is derived from its prefix here."""

from __future__ import annotations

import re
from dataclasses import dataclass

# \Z, not $: '$' also matches before a trailing newline, which would let "sine\n" through.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")
# A model or target name becomes a folder and the stem of files such as `.lib<name>.a.tmp<pid>` (255 bytes at
# most on Linux file systems), and C identifiers; 64 leaves room for every suffix.
MAX_NAME = 64


def is_valid_name(name: str) -> bool:
    """A model or target name: a letter, then letters, digits, '_' or '-' (also safe as a folder name)."""
    return bool(_NAME.match(name)) and len(name) <= MAX_NAME


def c_identifier(name: str) -> str:
    """`name` as a C identifier: every other character becomes '_', and a leading digit gets a '_' prefix."""
    ident = _NOT_IDENT.sub("_", name)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    return ident


def prefix_clash_key(prefix: str) -> str:
    """Two model prefixes clash when they are equal ignoring case: macros and guards are upper case."""
    return prefix.upper()


def unique_c_identifiers(names: list[str]) -> list[str]:
    """C identifiers for `names`, in order; raises ValueError naming both names when two map to one identifier."""
    seen: dict[str, str] = {}
    idents = []
    for name in names:
        ident = c_identifier(name)
        if ident in seen:
            raise ValueError(f"'{seen[ident]}' and '{name}' both become the C identifier '{ident}'")
        seen[ident] = name
        idents.append(ident)
    return idents


@dataclass(frozen=True)
class ModelSymbols:
    """Every C name generated for one model, from its prefix (ModelConfig.prefix)."""
    prefix: str

    @property
    def macro(self) -> str: return self.prefix.upper()  # <MACRO>_ARENA_BYTES, ...
    @property
    def include_guard(self) -> str: return f"CRTFORGE_{self.macro}_H_"
    @property
    def run(self) -> str: return f"{self.prefix}_run"
    @property
    def inputs_type(self) -> str: return f"{self.prefix}_inputs_t"
    @property
    def outputs_type(self) -> str: return f"{self.prefix}_outputs_t"
    @property
    def arena(self) -> str: return f"{self.prefix}_arena"

    def kernel(self, tvm_name: str) -> str:
        """A kernel's global symbol: prefixed, so two models' kernels never collide in one program."""
        return f"{self.prefix}_{tvm_name}"

    def int8_op(self, pattern: str, index: int) -> str:
        """The C function of the model's index-th int8 op (tasks/compile/int8.py), e.g. mlp_int8_0_fully_connected;
        its constants take this name plus a suffix."""
        return f"{self.prefix}_int8_{index}_{pattern}"

    def weight(self, constant: str) -> str:
        return f"{self.prefix}_{constant}"

    @property
    def arena_section(self) -> str:
        """The arena's zero-initialised section (executor.c), placeable like the weights' (config.PLACEABLE)."""
        return f".bss.crtforge.{self.prefix}.arena"

    @property
    def weights_section(self) -> str:
        """The read-only section of the model's weights (weights.S): a linker script can place it by name."""
        return f".rodata.crtforge.{self.prefix}.weights"
