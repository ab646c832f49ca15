"""Dependencies derived from the code, not listed by hand.

A task depends on the source of every crtforge module its stage can execute: the stage module and, transitively,
every `tasks.*` module it imports (at the top or inside a function), and every template those modules name.
Reading the source with `ast` imports nothing, so `doit list` stays light.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TASKS_DIR.parent
TEMPLATES_DIR = TASKS_DIR / "emit" / "templates"
# The third-party packages whose behaviour is part of a result: their versions are in every task's settings.
VERSIONED_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "tflite", "tflite-micro", "numpy")


def module_file(module: str) -> Path:
    """tasks.emit.codegen → tasks/emit/codegen.py (or a package's __init__.py)."""
    path = PROJECT_ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported_modules(module: str) -> set[str]:
    """The tasks.* modules that `module` imports anywhere in its source."""
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from tasks.x import y` may name a submodule y
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "tasks" and module_file(m).is_file()}


def _templates_named(module: str) -> set[Path]:
    """Templates a module names as string literals (get_template("executor.c.j2"))."""
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and n.value.endswith(".j2")}
    return {TEMPLATES_DIR / n for n in names if (TEMPLATES_DIR / n).is_file()}


@functools.cache
def module_closure(*modules: str) -> tuple[str, ...]:
    """`modules` and every tasks.* module they import, transitively, sorted."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_imported_modules(m) - seen)
    return tuple(sorted(seen))


@functools.cache
def code_files(*modules: str) -> tuple[str, ...]:
    """Every source file and template that running `modules` can read: a task's code dependencies."""
    closure = module_closure(*modules)
    files = {module_file(m) for m in closure} | {t for m in closure for t in _templates_named(m)}
    return tuple(sorted(str(f) for f in files))


@functools.cache
def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
