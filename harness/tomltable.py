"""The TOML reader every suite kind shares: one file, one table at a time, every key checked.

Every error is a SuiteError whose message is one line naming the file, the key and what was expected;
the CLI turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from .errors import one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # MindIE images ship Python 3.10 with tomli
    import tomli as tomllib


__all__ = ["Rule", "SuiteError", "Table", "did_you_mean", "read_toml", "tomllib"]


class SuiteError(ValueError):
    """A suite file is malformed; the message is one line for the user."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class Rule(TypedDict):
    """A value check and how to say what it expects, shared by several keys: `t.get(k, int, 0, **rule)`."""

    check: Callable[[Any], bool]
    expect: str


def did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(options)})" if options else hint


class Table:
    """Reads one TOML table, checking types and rejecting unknown keys."""

    def __init__(self, path: str, where: str, data: Any):
        if not isinstance(data, dict):
            raise SuiteError(f"{path}: {where}: expected a table, got {type(data).__name__}")
        self.path, self.where, self.data = path, where, data
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def fail(self, k: str, msg: str) -> SuiteError:
        return SuiteError(f"{self.path}: {self.key(k)}: {msg}")

    def get(
        self,
        k: str,
        typ: type | tuple[type, ...],
        default: Any = ...,
        *,
        check: Callable[[Any], bool] | None = None,
        expect: str = "",
    ) -> Any:
        self.used.add(k)
        if k not in self.data:
            if default is ...:
                raise self.fail(k, f"missing; expected {expect or _tname(typ)}")
            return default
        v = self.data[k]
        # bool is an int in Python; a suite saying `count = true` is a mistake.
        if not isinstance(v, typ) or (isinstance(v, bool) and bool not in _as_tuple(typ)):
            raise self.fail(k, f"expected {expect or _tname(typ)}, got {v!r}")
        if check is not None and not check(v):
            raise self.fail(k, f"expected {expect}, got {v!r}")
        return v

    def sub(self, k: str, default: Any = ...) -> Table:
        self.used.add(k)
        if k not in self.data and default is not ...:
            return Table(self.path, self.key(k), default)
        if k not in self.data:
            raise self.fail(k, "missing table")
        return Table(self.path, self.key(k), self.data[k])

    def only(self, keys: set[str]) -> None:
        """Reject unknown keys before reading known ones, so a misspelt key is named as such."""
        for k in self.data:
            if k not in keys:
                raise self.fail(k, f"unknown key{did_you_mean(k, sorted(keys))}")

    def done(self) -> None:
        self.only(self.used)


def _as_tuple(t: Any) -> tuple[Any, ...]:
    return t if isinstance(t, tuple) else (t,)


def _tname(t: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "true or false",
        float: "a number",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(x, x.__name__) for x in _as_tuple(t))


def decode(raw: bytes, path: str | Path) -> str:
    """UTF-8 text (a leading byte-order mark, as some Windows editors write, is dropped), or one SuiteError line
    naming the line and the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SuiteError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None


def read_bytes(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise SuiteError(f"{path}: cannot read {what} ({getattr(e, 'strerror', None) or e})") from None


def read_toml(path: str | Path, what: str = "suite file") -> dict[str, Any]:
    """A suite file's TOML (or `what` else), or one SuiteError line naming the file."""
    try:
        data: dict[str, Any] = tomllib.loads(decode(read_bytes(path, what), path))
        return data
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
