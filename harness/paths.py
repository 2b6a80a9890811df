"""Names that become paths. Suite and profile names are checked against one safe set when a suite is read; the
paths the harness writes under a root the user chose (--out, --baselines, the model cache) are checked again
where they are built, so that no name, however it got there, leads out of its root."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import USAGE, HarnessError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SAFE_RULE = "may use only letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit"
NAME_MAX = 255  # bytes in one file name, on Linux and macOS alike


def safe_name(name: str) -> bool:
    return SAFE_NAME.fullmatch(name) is not None


def shown(name: str, limit: int = 60) -> str:
    """A name as a message shows it: quoted, and cut short when long."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


def inside(root: str | Path, path: str | Path) -> Path:
    """`path`, when it stays under `root`; else HarnessError(USAGE). The check is lexical: a symbolic link the user
    put inside the root is theirs to put there, while `..`, an absolute name, a NUL or an over-long name is not."""
    text = os.fspath(path)
    if "\0" in text:
        raise HarnessError(f"{shown(text)}: a path cannot contain a NUL byte", USAGE)
    r, p = os.path.abspath(root), os.path.abspath(text)
    if os.path.commonpath([r, p]) != r:
        raise HarnessError(
            f"{shown(text)} leads outside {root}: a name in the suite or on the command line contains '..' or '/'",
            USAGE,
        )
    for part in Path(p).relative_to(r).parts:
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise HarnessError(
                f"{shown(part)}: longer than {NAME_MAX} bytes, the longest file name there can be", USAGE
            )
    return Path(path)
