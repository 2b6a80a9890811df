"""`harness calibrate SUITE --runs N`: N A/A runs of a perf suite on this runner, stored as the baseline's run
history, and per-metric thresholds fitted so that an A/A run stays within the suite's false-alarm budget. Each
runner class gets thresholds from its own drift, instead of one hand-set figure for all."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path

from . import baselines, pipeline
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


def calibrate(path: Path, opts: Options, runs: int) -> tuple[int, list[str]]:
    """(exit code, report lines)."""
    kind, suite = load_suite(path, opts)
    if kind not in (pipeline.DETERMINISM, pipeline.SERVED) or suite.perf is None:
        raise HarnessError(f"{path}: calibrate needs a suite with a [perf] section (in process or served)", USAGE)
    if runs < 3:
        raise HarnessError(f"--runs {runs}: calibration needs at least 3 runs (10 or more for a stable spread)", USAGE)
    if opts.dry_run:  # one run's plan (each of the N runs is the same); nothing runs, nothing is written
        from . import dryrun

        return OK, [f"calibration: {runs} A/A runs of this plan", dryrun.execute(kind, suite, opts).console]
    reason = opts.reason.strip() or f"calibration, {runs} A/A runs"
    res = None
    for i in range(runs):
        o = dataclasses.replace(opts, update_baselines=True, reason=reason, fresh_runs=i == 0)
        res = pipeline.execute(suite, o)
        print(f"calibration run {i + 1}/{runs}: exit {res.exit_code} ({res.run_dir})", flush=True)
        if res.exit_code == INFRA:
            return INFRA, [f"run {i + 1} failed; see {res.run_dir / 'summary.md'}"]
    assert res is not None
    lines = []
    for p in suite.profiles:
        target = res.baseline.written.get(p.name)
        if target is None:  # the last run's worker for this profile stored nothing: its report says why
            return INFRA, [f"{p.name}: the last run wrote no baseline; see {res.run_dir / 'summary.md'}"]
        b = baselines.load(target, suite.case_hash)
        gated = [m for m in b.run_medians() if latency.metric_kind(m) != "itl"]
        alpha_row = suite.perf.budget / max(1, len(gated) * len(suite.profiles))
        b.thresholds = fit(b, alpha_row)
        b.calibration = {
            "runs": len(b.runs),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "budget": suite.perf.budget,
            "alpha_row": alpha_row,
        }
        baselines.write(target, b)
        lines.append(
            f"{p.name}: {len(b.runs)} runs, per-row alpha {alpha_row:.2g}; thresholds "
            + ", ".join(f"{m} {100 * t:.1f}%" for m, t in b.thresholds.items())
            + f" -> {target}"
        )
    return OK, lines
