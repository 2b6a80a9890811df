"""`harness calibrate SUITE --runs N`: N A/A runs of a suite that times something (a [perf] suite, in process or
served, or a load-time suite) on this runner, stored as the baseline's run history, and per-metric thresholds fitted
so that an A/A run stays within the suite's false-alarm budget. Each runner class gets thresholds from its own
drift, instead of one hand-set figure for all."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path
from typing import Any

from . import baselines
from .analysis import latency, stats
from .errors import INFRA, OK, USAGE, HarnessError
from .options import Options
from .run import load as load_suite


def fit(b: baselines.Baseline, alpha_row: float) -> dict[str, float]:
    """Metric -> calibrated threshold, from the baseline's run medians (itl is not gated)."""
    out = {}
    for name, meds in sorted(b.run_medians().items()):
        if latency.metric_kind(name) != "itl" and math.isfinite(thr := stats.calibrated_threshold(meds, alpha_row)):
            out[name] = thr
    return out


def timed(kind_name: str, suite: Any) -> tuple[float, list[str]] | None:
    """A suite's false-alarm budget and the groups whose baselines hold its timings; None if it times nothing."""
    if kind_name == "loadtime":
        return suite.budget, [f"omp-{st}" for st in suite.settings]
    if kind_name in ("determinism", "served") and suite.perf is not None:
        return suite.perf.budget, [p.name for p in suite.profiles]
    return None


def calibrate(path: Path, opts: Options, runs: int) -> tuple[int, list[str]]:
    """(exit code, report lines)."""
    kind, suite = load_suite(path, opts)
    if (what := timed(kind.name, suite)) is None:
        raise HarnessError(
            f"{path}: calibrate needs a suite that times something: a [perf] section (in process or served) "
            "or a load-time suite",
            USAGE,
        )
    if runs < 3:
        raise HarnessError(f"--runs {runs}: calibration needs at least 3 runs (10 or more for a stable spread)", USAGE)
    if opts.dry_run:  # one run's plan (each of the N runs is the same); nothing runs, nothing is written
        from . import dryrun

        return OK, [f"calibration: {runs} A/A runs of this plan", dryrun.execute(kind, suite, opts).console]
    budget, groups = what
    reason = opts.reason.strip() or f"calibration, {runs} A/A runs"
    out = None
    for i in range(runs):
        o = dataclasses.replace(opts, update_baselines=True, reason=reason, fresh_runs=i == 0)
        out = kind.execute(suite, o)
        print(f"calibration run {i + 1}/{runs}: exit {out.exit_code} ({out.run_dir})", flush=True)
        if out.exit_code == INFRA:
            return INFRA, [f"run {i + 1} failed; see {out.run_dir / 'summary.md'}"]
    assert out is not None
    written = {}
    for g in groups:
        if (target := out.written.get(g)) is None:  # the last run stored nothing for it: its report says why
            return INFRA, [f"{g}: the last run wrote no baseline; see {out.run_dir / 'summary.md'}"]
        written[g] = (target, baselines.load(target, suite.case_hash))
    # every gated row of the run shares the budget, as the gate shares it
    rows = sum(1 for _, b in written.values() for m in b.run_medians() if latency.metric_kind(m) != "itl")
    alpha_row = budget / max(1, rows)
    lines = []
    for g, (target, b) in written.items():
        b.thresholds = fit(b, alpha_row)
        b.calibration = {
            "runs": len(b.runs),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "budget": budget,
            "alpha_row": alpha_row,
        }
        baselines.write(target, b)
        lines.append(
            f"{g}: {len(b.runs)} runs, per-row alpha {alpha_row:.2g}; thresholds "
            + ", ".join(f"{m} {100 * t:.1f}%" for m, t in b.thresholds.items())
            + f" -> {target}"
        )
    return OK, lines
