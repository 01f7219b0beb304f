"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class MiLlmError(Exception):
    """An error caused by the user's input or environment, not by a bug."""

    exit_code = 2


class InputError(MiLlmError):
    """Bad content in an input file, located as FILE:LINE when the line is known."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
