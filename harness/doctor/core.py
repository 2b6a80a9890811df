"""The doctor's machinery: a Finding, the Context every check looks at, the @check decorator and its registry,
running the checks in order, and the findings as a table, a summary line, JSON and an exit code.

The checks themselves live in the topic modules of this package (harness.registry.CHECKS names them, one line a
module; a package adds its own through the entry-point group `harness.checks`). They import this module, never
the package, so that the package can hand these names on without an import circle.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OK, USAGE, one_line
from ..status import Severity

SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
NOT_APPLICABLE = "not applicable on {device}"


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    found: str
    fix: str = ""


@dataclass(frozen=True)
class SuiteFile:
    """A suite in scope: its raw TOML (checks that must see a suite its own parser refuses read this), the suite as
    the run would load it (None when it does not load), and why it does not."""

    path: Path
    data: dict[str, Any]
    kind: str = ""
    suite: Any = None
    error: str = ""


@dataclass
class Context:
    """What the checks look at. Facts that cost a subprocess are computed once, on first use."""

    device: str = "cpu"
    python: str = sys.executable  # the engine's interpreter (atb_llm / MindIE run under the image's Python)
    suites: list[SuiteFile] = field(default_factory=list)
    model_dirs: list[Path] = field(default_factory=list)
    model_errors: list[str] = field(default_factory=list)  # references that could not be prepared
    baselines: Path = Path("baselines")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    timeout_s: float = 300.0
    _imports: dict[str, tuple[bool, str]] = field(default_factory=dict, repr=False)

    def not_applicable(self) -> str:
        return NOT_APPLICABLE.format(device=self.device)

    @property
    def engines(self) -> set[str]:
        """What computes: transformers in-process, torch_npu on an NPU, MindIE (mindie_llm + atb_llm) when a
        served suite starts it."""
        out = {"transformers"}
        if self.device == "npu":
            out.add("torch_npu")
        for s in self.suites:
            cmd = str(s.data.get("server", {}).get("command", "")).lower() if isinstance(s.data, dict) else ""
            if "mindie" in cmd or "mindieservice" in cmd:
                out.add("mindie")
        return out

    def run_python(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`code` under the engine's interpreter and environment; a missing interpreter is the caller's finding."""
        return subprocess.run(
            [self.python, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            env=dict(self.environ),
        )

    @functools.cached_property
    def probe(self) -> dict[str, Any]:
        """The engine interpreter's version, prefix, pip and package versions, without importing any of them."""
        try:
            p = self.run_python(_PROBE)
        except (OSError, subprocess.SubprocessError) as e:
            return {"error": f"cannot run {self.python}: {e}"}
        if p.returncode != 0:
            return {"error": f"{self.python} failed: {(p.stderr.strip().splitlines() or ['no output'])[-1]}"}
        found: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])  # _PROBE prints one JSON object
        return found

    def try_import(self, module: str) -> tuple[bool, str]:
        """Import `module` in a fresh interpreter: a crash or a static-TLS failure cannot take the doctor down."""
        if module not in self._imports:
            try:
                p = self.run_python(f"import {module}")
                self._imports[module] = (p.returncode == 0, p.stderr.strip())
            except subprocess.TimeoutExpired:
                self._imports[module] = (False, f"import {module} did not finish in {self.timeout_s:.0f}s")
            except OSError as e:
                self._imports[module] = (False, f"cannot run {self.python}: {e}")
        return self._imports[module]


_PROBE = r"""
import importlib.metadata as md, importlib.util as u, json, sys
def version(d):
    try:
        return md.version(d)
    except Exception:
        return ""
def where(m):
    try:
        s = u.find_spec(m)
    except Exception:
        return ""
    return list(s.submodule_search_locations or [])[0] if s and s.submodule_search_locations else ""
print(json.dumps({
    "version": list(sys.version_info[:3]), "executable": sys.executable, "prefix": sys.prefix,
    "versions": {d: version(d) for d in ("torch", "torch_npu", "transformers", "mindie_llm", "atb_llm", "vllm")},
    "pip": where("pip"), "torch_dir": where("torch"),
}))
"""

CheckFn = Callable[[Context], Iterable[Finding]]
REGISTRY: dict[str, CheckFn] = {}
_MODULE: dict[str, str] = {}  # check id -> the module that registered it


def check(id: str, devices: tuple[str, ...] = (), looks_at: str = "") -> Callable[[CheckFn], CheckFn]:
    """Register a check. With `devices`, on any other device it runs nothing and says what it would have looked
    at is "not applicable on <device>"."""

    def register(fn: CheckFn) -> CheckFn:
        def guarded(ctx: Context) -> Iterable[Finding]:
            if devices and ctx.device not in devices:
                return [Finding(id, "info", f"{looks_at or id}: {ctx.not_applicable()}")]
            return fn(ctx)

        REGISTRY[id] = guarded
        _MODULE[id] = fn.__module__
        return fn

    return register


def registry() -> dict[str, CheckFn]:
    """Every check, in the order of harness.registry.CHECKS and, within a module, of its @check lines: the
    report's order, whichever module happened to be imported first."""
    from ..registry import CHECKS

    rank: dict[str, int] = {}
    for name, target in CHECKS.entries().items():
        CHECKS.get(name)  # a check module registers its checks with @check when imported
        rank.setdefault(target.partition(":")[0], len(rank))
    return dict(sorted(REGISTRY.items(), key=lambda item: rank.get(_MODULE.get(item[0], ""), len(rank))))


def run_checks(ctx: Context, only: Iterable[str] | None = None) -> list[Finding]:
    """Every registered check (or those named), in registration order. A check that crashes is a warning that
    names it: the doctor reports what it could not look at instead of dying."""
    out: list[Finding] = []
    for id, fn in registry().items():
        if only is not None and id not in only:
            continue
        try:
            out += list(fn(ctx))
        except Exception as e:  # noqa: BLE001  (a bug in one check must not hide the others' findings)
            out.append(Finding(id, "warning", f"the check could not run: {type(e).__name__}: {e}", "report this"))
    return out


def exit_code(findings: Iterable[Finding]) -> int:
    return USAGE if any(f.severity == "error" for f in findings) else OK


def table(findings: list[Finding]) -> str:
    from tabulate import tabulate

    rows = [[f.id, f.severity, one_line(f.found), one_line(f.fix)] for f in findings]
    return tabulate(
        rows, headers=["check", "severity", "found", "fix"], tablefmt="github", maxcolwidths=[None, None, 70, 70]
    )


def to_json(findings: list[Finding]) -> dict[str, Any]:
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    return {"result": "error" if counts["error"] else "ok", "counts": counts, "findings": [asdict(f) for f in findings]}


def summary(findings: list[Finding]) -> str:
    c = to_json(findings)["counts"]
    return f"doctor: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info"
