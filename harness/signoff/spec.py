"""The sign-off file (suites/signoff.toml): which suites are gates, read and checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import USAGE, HarnessError
from ..tomltable import Rule, SuiteError, Table, read_toml

if TYPE_CHECKING:
    pass

SIGNOFF_FORMAT = 1


@dataclass(frozen=True)
class GateSpec:
    suite: Path
    profiles: tuple[str, ...] = ()  # empty: the suite's own
    requires: tuple[str, ...] = ()  # Python modules of an extra: without them the gate is out of scope
    reference: str | None = None  # a profile the others are gated against, measured side by side ([perf] reference)


@dataclass(frozen=True)
class Spec:
    path: Path
    gates: tuple[GateSpec, ...]
    device: str | None = None


def load_spec(path: Path) -> Spec:
    """The sign-off file; one line naming the file and key for anything wrong in it (exit 2)."""
    try:
        root = Table(str(path), "", read_toml(path, "sign-off file"))
        head = root.sub("signoff")
        version = head.get("version", int, expect=f"the sign-off format version, {SIGNOFF_FORMAT}")
        if version != SIGNOFF_FORMAT:
            raise head.fail("version", f"unsupported format {version}; this harness reads {SIGNOFF_FORMAT}")
        device = head.get("device", str, "", check=lambda v: v in ("", "cpu", "cuda", "npu"), expect="cpu|cuda|npu")
        raw = head.get("gates", list, expect='a list such as [{ suite = "determinism.toml" }]')
        head.done()
        root.done()
        gates = []
        for i, g in enumerate(raw):
            t = Table(str(path), f"signoff.gates[{i}]", g)
            suite = Path(path).parent / t.get("suite", str, expect="a suite file, relative to the sign-off file")
            if not suite.is_file():
                raise t.fail("suite", f"file {suite} not found")
            strings = Rule(check=lambda v: all(isinstance(x, str) for x in v), expect="a list of strings")
            gates.append(
                GateSpec(
                    suite=suite,
                    profiles=tuple(t.get("profiles", list, [], **strings)),
                    requires=tuple(t.get("requires", list, [], **strings)),
                    reference=t.get("reference", str, "") or None,
                )
            )
            t.done()
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    if not gates:
        raise HarnessError(f"{path}: signoff.gates: empty; name at least one suite", USAGE)
    return Spec(Path(path), tuple(gates), device or None)


def default_suites(path: Path) -> list[Path]:
    """The doctor's default scope: the sign-off file's suites (none when there is no such file)."""
    try:
        return [g.suite for g in load_spec(path).gates if available(g.requires)]
    except HarnessError:
        return []


def available(modules: tuple[str, ...]) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)
