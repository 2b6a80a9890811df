"""`harness signoff`: the pre-release answer in one place. The doctor first; then every suite of the sign-off file
(suites/signoff.toml) through the one seam in run.py against the stored baselines; then one report: GO, NO-GO or
INCOMPLETE on its first line, every gate with its verdict and run, the environment against the baselines', the
model files' hashes, and SHA256SUMS over every artifact so that `harness signoff --verify DIR` can check it later.

GO needs every gate to have run and passed: a gate that was skipped (no baseline for this host, timings of other
hardware, too few samples, a suite that did not run) makes the result INCOMPLETE, never GO.
Exit codes (the harness's one rule): 0 GO; 1 NO-GO or INCOMPLETE (the first line says which); 2 an input error (a
suite, the sign-off file, or an error the doctor found); 3 infrastructure (a worker or server failed).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

from .. import atomic, baselines, doctor, envinfo, run
from ..errors import OK, USAGE, HarnessError
from ..options import Options
from ..tomltable import read_toml
from .environment import environment_diff, model_rows
from .gates import Gate, decide, judge, judged_at, other_keys, unjudged_rows
from .manifest import verify
from .report import SignoffResult, console, write
from .spec import GateSpec, Spec, available, default_suites, load_spec

__all__ = [
    "Gate", "SignoffResult", "Spec", "decide", "default_suites", "environment_diff", "execute", "judge", "judged_at",
    "load_spec", "main", "other_keys", "unjudged_rows", "verify",
]  # fmt: skip


def run_doctor(ctx: doctor.Context) -> list[doctor.Finding]:
    return doctor.run_checks(ctx)


def execute(spec: Spec, opts: Options, python: str | None = None) -> SignoffResult:
    started = time.time()
    rd = run.RunDir.create(opts.out, "signoff")
    for sub in ("jobs", "records", "logs"):
        (rd.path / sub).rmdir()  # a sign-off keeps its suites' runs under runs/
    in_scope = [g for g in spec.gates if available(g.requires)]
    ctx = doctor.build_context(
        [g.suite for g in in_scope],
        device=opts.device,
        model=opts.model,
        python=python,
        baselines=opts.baselines,
        opts=opts,
    )
    findings = run_doctor(ctx)
    atomic.write_json(rd.path / "doctor.json", doctor.to_json(findings))
    done: dict[int, Gate] = {
        i: Gate(g.suite.stem, str(g.suite), "not in scope", reasons=(f"needs {', '.join(g.requires)}, not installed",))
        for i, g in enumerate(spec.gates)
        if g not in in_scope
    }
    todo = [(i, g) for i, g in enumerate(spec.gates) if i not in done]
    per_gate: list[tuple[list[baselines.BaselineUse], dict[str, Any]]] = []
    commit = envinfo.project_commit()  # the same commit the baselines record
    models = model_rows(ctx.model_dirs, opts.baselines)

    def report(pending: str) -> SignoffResult:
        """The sign-off as it stands, written whole: after the doctor and after every gate, so a sign-off killed
        at gate N leaves a report of the gates before it, INCOMPLETE, naming the ones that never ran."""
        left = {i: Gate(g.suite.stem, str(g.suite), "not run", reasons=(pending,)) for i, g in todo if i not in done}
        gates = [{**done, **left}[i] for i in range(len(spec.gates))]
        result, code, reason = decide(findings, gates)
        res = SignoffResult(
            result=result,
            exit_code=code,
            reason=reason,
            folder=rd.path,
            findings=findings,
            gates=gates,
            env=environment_diff(per_gate, commit),
            models=models,
            started=started,
            commit=commit,
            spec=str(spec.path),
        )
        write(res)
        return res

    if any(f.severity == "error" for f in findings):
        return report("the doctor found errors")
    runs = rd.path / "runs"
    runs.mkdir()
    loaded = []
    for i, g in todo:
        o = dataclasses.replace(gate_options(opts, g), out=runs)
        loaded.append((i, g, o, *run.load(g.suite, o)))  # all validated before anything runs
    stopped = "the sign-off stopped before this gate ran (killed or interrupted): rerun it"
    res = report(stopped)
    for i, g, o, kind, suite in loaded:
        print(f"signoff: gate {g.suite.stem} ({g.suite})", file=sys.stderr, flush=True)
        try:
            outcome = run.execute(kind, suite, o)  # the gate's history row and report.html, as any run's
        except HarnessError as e:  # the model would not prepare, the run directory could not be made
            done[i] = Gate(g.suite.stem, str(g.suite), "error", e.code, reasons=(str(e),), todo="fix and rerun")
        else:
            rel = outcome.run_dir.relative_to(rd.path).as_posix()
            done[i] = other_keys(judge(g.suite.stem, str(g.suite), outcome, rel), outcome.baselines)
            per_gate.append((outcome.baselines, outcome.device))
        res = report(stopped)
    return res


def main(args: Any, opts: Options) -> int:
    if args.verify is not None:
        code, problems = verify(args.verify)
        for p in problems:
            print(f"signoff --verify: {p}")
        print(
            f"signoff --verify {args.verify}: "
            + ("every file matches SHA256SUMS" if code == OK else f"{len(problems)} problem(s)")
        )
        return code
    spec = load_spec(args.file)
    if spec.device and not opts.device:
        opts.device = spec.device
    if opts.update_baselines:
        raise HarnessError(
            "signoff judges against the baselines; record them with harness run --update-baselines", USAGE
        )
    if opts.dry_run:  # each gate planned, nothing run, no sign-off folder (harness.dryrun)
        code, lines = dry_run(spec, opts)
        print("\n".join(lines), flush=True)
        return code
    res = execute(spec, opts, args.python)
    print(console(res), flush=True)
    return res.exit_code


def dry_run(spec: Spec, opts: run.Options) -> tuple[int, list[str]]:
    """`harness signoff --dry-run`: each gate in scope planned as `harness run --dry-run` plans it; no folder."""
    from .. import dryrun

    lines = ["sign-off dry run: the doctor runs first (harness doctor --dry-run shows it), then each gate"]
    code = 0
    for g in spec.gates:
        if not available(g.requires):
            lines.append(f"gate {g.suite}: not in scope (needs {', '.join(g.requires)}, not installed)")
            continue
        o = gate_options(opts, g)
        try:
            kind, suite = run.load(g.suite, o)
            lines.append(dryrun.execute(kind, suite, o).console)
        except HarnessError as e:
            lines.append(f"gate {g.suite}: error: {e}")
            code = max(code, e.code)
    return code, lines


def gate_options(opts: Options, g: GateSpec) -> Options:
    """A gate's run options: its profiles, and a reference (the gate's, or the command line's stack) for the timed
    suites only: a reference is a timed comparison, and the determinism gates run as they are."""
    timed = "perf" in read_toml(g.suite)
    return dataclasses.replace(
        opts,
        profiles=opts.profiles or list(g.profiles) or None,
        reference=(opts.reference or g.reference) if timed else None,
        reference_python=opts.reference_python if timed else None,
        reference_setup=opts.reference_setup if timed else None,
    )
