"""A gate's verdict from its run's typed Outcome, and the sign-off's decision from the gates and the doctor."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from .. import baselines, doctor, run
from ..errors import CHECK_FAILED, INFRA, OK, USAGE, one_line
from ..status import Decision, GateVerdict

if TYPE_CHECKING:
    from ..analysis.stats import Change


@dataclass(frozen=True)
class Gate:
    name: str  # the suite file's stem
    suite: str
    verdict: GateVerdict
    exit_code: int | None = None
    run_dir: str = ""  # relative to the sign-off folder
    checks: tuple[run.Check, ...] = ()
    reasons: tuple[str, ...] = ()  # why it is not a pass
    todo: str = ""  # what to do about it
    judged_at: str = ""  # the timing rows' thresholds and what they were judged against: what a pass can claim


class _Common(TypedDict):
    """The fields every gate `judge` returns has, whatever its verdict."""

    name: str
    suite: str
    exit_code: int | None
    run_dir: str
    checks: tuple[run.Check, ...]
    judged_at: str


UNJUDGED = {
    "insufficient": "too few samples or baseline runs for these rows: add runs to the baseline (harness calibrate "
    "SUITE, or another --update-baselines) or raise the suite's repeats",
    "noisy": "only passes that ran beside other work decide these rows: rerun on a quiet runner",
    "underpowered": "this run could not have seen a change of the threshold's size (detectable > threshold): rerun "
    "on a quieter runner, raise the repeats, or calibrate thresholds for this runner (harness calibrate SUITE)",
    "inconclusive": "a change beyond the threshold was seen but is not significant under the run's false-alarm "
    "budget: neither a regression nor a pass; rerun with more repeats or calibrate (harness calibrate SUITE)",
}


def unjudged_rows(rows: list[Change]) -> list[tuple[str, str]]:
    """(metric, why) of the gated timing rows a run could not judge: `insufficient`, `noisy`, or `~` where the
    smallest change the run could detect is larger than the threshold (a pass that proves nothing) or where the change
    seen is beyond the threshold yet not significant (a pass that would contradict the run). The rows are
    a run's timings against its baselines; the determinism cost and the load-time recommendation compare settings,
    not releases, and are not gates."""
    out: list[tuple[str, str]] = []
    for r in rows:
        if r.status in UNJUDGED:
            out.append((r.metric, r.status))
        elif r.status == "~" and r.detectable > r.threshold:  # nan compares false: unknown is not underpowered
            out.append((f"{r.metric} (detectable {r.detectable:.0%} > threshold {r.threshold:.0%})", "underpowered"))
        elif r.status == "~" and r.worse:  # a pass would claim "nothing beyond the threshold" against what was seen
            out.append((f"{r.metric} (x{r.ratio:.3f} beyond threshold {r.threshold:.0%}, p={r.p:.2g})", "inconclusive"))
    return out


def judged_at(rows: list[Change]) -> str:
    """The range of the gated timing rows' thresholds and the baseline runs behind them: a pass claims no
    regression beyond these, and a runner calibrated from few or drifting runs claims little."""
    gated = [r for r in rows if r.status not in ("not comparable", "failed")]
    if not gated:
        return ""
    thr = [r.threshold for r in gated]
    runs = sorted({r.runs for r in gated})
    against = " or ".join("1 run (within-run test)" if n == 0 else f"{n} runs" for n in runs)
    lo, hi = min(thr), max(thr)
    span = f"{lo:.0%}" if lo == hi else f"{lo:.0%} to {hi:.0%}"
    return f"{span} ({len(thr)} row{'s' if len(thr) > 1 else ''}; baseline {against})"


def judge(name: str, suite: str, outcome: run.Outcome, rel_dir: str) -> Gate:
    """A suite's outcome as one gate: its exit code first (3 and 2 are no verdict on the release), then its checks."""
    checks = tuple(outcome.checks)
    failed = [c for c in checks if c.outcome == "failed"]
    skipped = [c for c in checks if c.outcome == "skipped"]
    thin = sorted(set(unjudged_rows(outcome.timing)))
    line = lambda c: f"{c.group}::{c.name}: {one_line(c.message.splitlines()[0]) if c.message else c.outcome}"  # noqa: E731
    common: _Common = {
        "name": name,
        "suite": suite,
        "exit_code": outcome.exit_code,
        "run_dir": rel_dir,
        "checks": checks,
        "judged_at": judged_at(outcome.timing),
    }
    if outcome.exit_code == INFRA:
        return Gate(
            **common,
            verdict="error",
            reasons=tuple(map(line, failed)) or ("infrastructure error",),
            todo=f"read {rel_dir}/summary.md (worker or server log), fix the cause, rerun the sign-off",
        )
    if outcome.exit_code == USAGE:
        return Gate(
            **common,
            verdict="not comparable",
            reasons=tuple(map(line, failed)),
            todo="a baseline cannot be compared (suite changed or file damaged): review, then re-record it with "
            "--update-baselines --reason '...'",
        )
    if failed:
        return Gate(**common, verdict="fail", reasons=tuple(map(line, failed)), todo=f"see {rel_dir}/summary.md")
    if skipped or thin:
        todo = (
            [f"record this host's baselines: harness run {suite} --update-baselines --reason '...'"] if skipped else []
        )
        todo += [UNJUDGED[st] for st in sorted({st for _, st in thin})]
        return Gate(
            **common,
            verdict="incomplete",
            reasons=tuple(map(line, skipped)) + tuple(f"{m}: {st}" for m, st in thin),
            todo="; ".join(todo),
        )
    return Gate(**common, verdict="pass")


def decide(findings: list[doctor.Finding], gates: list[Gate]) -> tuple[Decision, int, str]:
    """(result, exit code, the first line's reason). Exit codes keep the harness's rule: 3 infrastructure, else 2
    input, else 1 anything short of GO, else 0."""
    counted = [g for g in gates if g.verdict != "not in scope"]
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        return "NO-GO", USAGE, f"the doctor found {len(errors)} error(s): {', '.join(sorted({f.id for f in errors}))}"
    codes = [g.exit_code or 0 for g in counted]
    code = INFRA if INFRA in codes else USAGE if USAGE in codes else OK
    failed = [g.name for g in counted if g.verdict == "fail"]
    if failed:
        return "NO-GO", max(code, CHECK_FAILED), f"{len(failed)} of {len(counted)} gates failed: {', '.join(failed)}"
    short = [f"{g.name} ({g.verdict})" for g in counted if g.verdict != "pass"]
    if short or not counted:
        why = ", ".join(short) or "no gate ran"
        return "INCOMPLETE", max(code, CHECK_FAILED), f"{len(short)} of {len(counted)} gates not judged: {why}"
    return "GO", OK, f"all {len(counted)} gates passed"


def other_keys(gate: Gate, used: list[baselines.BaselineUse]) -> Gate:
    """A gate judged against another key's baseline (another torch, CANN or chip) passed at that tier's weaker
    level; for a release that is not enough: the baselines of this key must be recorded (and reviewed) first."""
    other = sorted({f"{u.path} ({u.tier})" for u in used if u.tier != "same key"})
    if gate.verdict != "pass" or not other:
        return gate
    return dataclasses.replace(
        gate,
        verdict="incomplete",
        reasons=(
            f"no baseline for this key: compared with {', '.join(other[:3])}" + (" ..." if len(other) > 3 else ""),
        ),
        todo=f"review, then record this key's baselines: harness run {gate.suite} --update-baselines --reason '...'",
    )
