"""The one error base class: every error a user can cause, or a step that fails for a reason worth a sentence,
is a CrtforgeError. doit's wiring shows it as one message (no traceback) and fails the task."""

from __future__ import annotations

from pathlib import Path


class CrtforgeError(Exception):
    """`file: key: problem HINT: fix`; `file`, `key` and `hint` may be empty when there is nothing to cite."""

    def __init__(self, problem: str, file: Path | str = "", key: str = "", hint: str = ""):
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.hint = hint
        where = f"{self.file}: {key}" if self.file and key else self.file or key
        super().__init__((f"{where}: " if where else "") + problem + (f" HINT: {hint}" if hint else ""))
