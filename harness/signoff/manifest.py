"""SHA256SUMS over a sign-off folder, and its verification: a manifest vouches only for the folder it sits in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import atomic
from ..errors import CHECK_FAILED, OK, USAGE, HarnessError
from ..models import sha256

if TYPE_CHECKING:
    pass

SUMS = "SHA256SUMS"


def write_sums(folder: Path) -> Path:
    """SHA256SUMS over every file in the folder (sha256sum's format: `sha256sum -c` checks it too)."""
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in _files(folder)]
    atomic.write_text(folder / SUMS, "\n".join(lines) + "\n")
    return folder / SUMS


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != SUMS)


def outside(folder: Path, name: str) -> str:
    """Why a manifest entry does not name a file inside `folder` ("" when it does)."""
    rel = Path(name)
    if rel.is_absolute():
        return "an absolute path"
    if ".." in rel.parts:
        return "a path with '..'"
    try:
        (folder / rel).resolve().relative_to(folder.resolve())
    except ValueError:
        return "a link out of the folder"
    return ""


def verify(folder: Path) -> tuple[int, list[str]]:
    """(0, []) when every file matches SHA256SUMS; (1, what changed); HarnessError(USAGE) for no manifest."""
    sums = Path(folder) / SUMS
    try:
        text = sums.read_text(encoding="utf-8")
    except OSError as e:
        raise HarnessError(
            f"{sums}: cannot read the manifest ({e.strerror or e}); is {folder} a sign-off folder?", USAGE
        ) from None
    listed: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        h, sep, name = line.partition("  ")
        if not sep or len(h) != 64 or not name:
            raise HarnessError(f"{sums}:{n}: not a `sha256  path` line", USAGE)
        listed[name] = h
    problems = []
    for name, h in listed.items():
        p = Path(folder) / name
        if why := outside(Path(folder), name):
            problems.append(f"refused: {name} ({why}; a manifest vouches only for the folder it sits in)")
        elif not p.is_file():
            problems.append(f"missing: {name}")
        elif sha256(p) != h:
            problems.append(f"changed: {name} (sha256 {sha256(p)[:16]}, manifest {h[:16]})")
    problems += [
        f"not in the manifest: {p.relative_to(folder).as_posix()}"
        for p in _files(Path(folder))
        if p.relative_to(folder).as_posix() not in listed
    ]
    return (CHECK_FAILED if problems else OK), problems
