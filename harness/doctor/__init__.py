"""`harness doctor`: a preflight against the known failure modes (the MindIE FAQ's automatable ones), before a model
loads. Each check is a small function that looks at a Context and returns Findings: an id, a severity, what it
found and the exact fix. The machinery (Finding, Context, @check, the registry, the reports) is in core.py; the
checks are in one module per topic (suite, python, model, memory, loadtime, determinism, serving), which
harness.registry.CHECKS lists in the report's order. This module builds the Context from the command line and runs.

Exit 0 when no finding is an error, 2 when one is (the environment or the input is wrong: USAGE, like any other
input error). The doctor never imports torch: what the engine's interpreter can import is asked in a subprocess.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import USAGE, HarnessError
from ..status import Severity
from .core import (
    NOT_APPLICABLE,
    REGISTRY,
    SEVERITIES,
    CheckFn,
    Context,
    Finding,
    SuiteFile,
    check,
    exit_code,
    registry,
    run_checks,
    summary,
    table,
    to_json,
)

__all__ = [
    "NOT_APPLICABLE", "REGISTRY", "SEVERITIES", "CheckFn", "Context", "Finding", "Severity", "SuiteFile",
    "build_context", "check", "exit_code", "main", "model_refs", "registry", "run_checks", "suite_file", "summary",
    "table", "to_json",
]  # fmt: skip


def suite_file(path: Path, opts: Any) -> SuiteFile:
    """A suite as the run would load it, and its raw TOML for the checks that must see what its parser refuses."""
    from .. import run
    from ..tomltable import SuiteError, read_toml

    try:
        data = read_toml(path)
    except SuiteError as e:
        return SuiteFile(path, {}, error=str(e))
    kind = run.kind_name(data)
    try:
        _, suite = run.load(path, opts)
    except HarnessError as e:
        return SuiteFile(path, data, kind, error=str(e))
    return SuiteFile(path, data, kind, suite)


def model_refs(suites: list[SuiteFile], override: str | None) -> list[str]:
    if override:
        return [override]
    refs: list[str] = []
    for s in suites:
        ref = getattr(s.suite, "model_ref", None) or getattr(getattr(s.suite, "model", None), "ref", None)
        if ref is None:
            ref = str(s.data.get("model", {}).get("ref", "smollm2-135m")) if isinstance(s.data, dict) else ""
        if ref and ref not in refs:
            refs.append(ref)
    return refs or ["smollm2-135m"]


def build_context(
    suites: list[Path],
    *,
    device: str | None,
    model: str | None,
    python: str | None,
    baselines: Path,
    opts: Any,
    prepare: Callable[[str], Path | None] | None = None,  # None from it: not prepared yet (a dry run), left out
) -> Context:
    from .. import runner

    files = [suite_file(p, opts) for p in suites]
    dirs, errors = [], []
    for ref in model_refs(files, model):
        try:
            d = (prepare or runner.prepare_model)(ref)
        except HarnessError as e:
            errors.append(f"{ref}: {e}")
            continue
        if d is None:  # a dry run: not converted yet, so there is no folder to check
            continue
        if d not in dirs:
            dirs.append(d)
    dev = device or next(
        (str(s.data.get("model", {}).get("device", "")) for s in files if isinstance(s.data.get("model"), dict)), ""
    )
    return Context(
        device=dev or "cpu",
        python=python or sys.executable,
        suites=files,
        model_dirs=dirs,
        model_errors=errors,
        baselines=baselines,
    )


def main(args: Any, opts: Any, default_suites: list[Path]) -> int:
    if args.python and not Path(args.python).exists():
        raise HarnessError(f"--python {args.python}: no such interpreter", USAGE)
    from .. import dryrun

    ctx = build_context(
        args.suites or default_suites,
        device=args.device,
        model=args.model,
        python=args.python,
        baselines=args.baselines,
        opts=opts,
        prepare=dryrun.prepared if opts.dry_run else None,
    )
    findings = run_checks(ctx)
    if args.json:
        print(json.dumps(to_json(findings), indent=1))
    else:
        print(table(findings))
        print(summary(findings))
    code = exit_code(findings)
    if opts.dry_run:  # then what each suite would run (harness.dryrun); no model is converted for either
        from .. import dryrun, run

        for s in ctx.suites:
            if s.suite is None or s.error:
                continue  # the findings name it
            try:
                text = dryrun.execute(run.get(s.kind), s.suite, opts).console
            except HarnessError as e:
                text, code = f"dry run of {s.path}: error: {e}", max(code, e.code)
            print(text, file=sys.stderr if args.json else sys.stdout)
    return code
