"""The one place where names from pipeline.toml and from models become C identifiers."""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")


def is_valid_name(name: str) -> bool:
    """A model or target name: a letter, then letters, digits, '_' or '-' (also safe as a folder name)."""
    return bool(_NAME.match(name))


def c_identifier(name: str) -> str:
    """`name` as a C identifier: every other character becomes '_', and a leading digit gets a '_' prefix."""
    ident = _NOT_IDENT.sub("_", name)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    return ident


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
