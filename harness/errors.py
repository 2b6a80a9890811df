"""Exit codes, and the error that carries one to the edge of the program."""
from __future__ import annotations

OK, CHECK_FAILED, USAGE, INFRA = 0, 1, 2, 3


class HarnessError(Exception):
    """A one-line message for the user and the exit code it ends the run with."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
