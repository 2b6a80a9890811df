"""Exit codes, and the error that carries one to the edge of the program."""

from __future__ import annotations

OK, CHECK_FAILED, USAGE, INFRA = 0, 1, 2, 3


def one_line(text: str) -> str:
    """Text with every unprintable character escaped: a key or value from a hostile file can neither break the
    message into lines (newline, U+2028, U+0085, ...) nor drive the terminal (escape sequences, bidi overrides)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class HarnessError(Exception):
    """A one-line message for the user and the exit code it ends the run with."""

    def __init__(self, message: str, code: int):
        super().__init__(one_line(message))
        self.code = code
