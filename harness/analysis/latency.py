"""Latency from records: per-sequence samples, percentiles, and the gate against a baseline. Pure functions."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..records import Record
from . import stats

# Gated per-sequence metrics. ITL is pooled for percentiles only: its samples within one sequence are not
# independent, so testing them would overstate significance.
HIGHER_IS_BETTER = {
    "tok_s",
}
UNITS = {
    "ttft": "ms",
    "tpot": "ms",
    "e2e": "ms",
    "tok_s": "tok/s",
    "itl": "ms",
    "load": "ms",
    "warm": "ms",
    "cold": "ms",
}


def sequence_metrics(r: Record) -> dict[str, float]:
    t = r.token_times
    if not t or r.failed:
        return {}
    # A server streams chunks, not always one per token: its token count comes from `usage`.
    n = r.output_tokens or len(t)
    return {
        "ttft": t[0],
        "tpot": (t[-1] - t[0]) / (n - 1) if n > 1 else math.nan,
        "e2e": t[-1],
        "tok_s": n / t[-1] if t[-1] > 0 else math.nan,
    }


def samples(records: list[Record]) -> dict[str, list[float]]:
    """Metric name -> raw samples, one per sequence; names are "<schedule> <metric>" (plus "<schedule> itl")."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.warmup or r.failed:
            continue
        for m, v in sequence_metrics(r).items():
            if math.isfinite(v):
                out[f"{r.schedule} {m}"].append(v)
        out[f"{r.schedule} itl"] += [b - a for a, b in zip(r.token_times, r.token_times[1:])]
    return dict(out)


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    p50, p90, p99 = np.percentile(np.asarray(xs, dtype=float), [50, 90, 99])
    return {"n": len(xs), "p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(xs))}


def metric_kind(name: str) -> str:
    return name.rsplit(" ", 1)[-1]


def gate(
    before: dict[str, list[float]],
    after: dict[str, list[float]],
    thresholds: dict[str, float],
    default_threshold: float = 0.05,
    alpha: float = 0.05,
    seed: int = 0,
    runs: dict[str, list[float]] | None = None,
) -> list[stats.Change]:
    """Compare every gated metric present on either side; `itl` is reported, not gated. `thresholds` by full name
    (calibrated, "solo tpot") or by metric ("tpot"); `runs`: the baseline's per-run medians by full name."""
    out = []
    for name in sorted(set(before) | set(after)):
        kind = metric_kind(name)
        if kind == "itl":
            continue
        thr = thresholds.get(name, thresholds.get(kind, default_threshold))
        out.append(
            stats.compare(
                name,
                before.get(name, []),
                after.get(name, []),
                threshold=thr,
                alpha=alpha,
                higher_is_better=kind in HIGHER_IS_BETTER,
                seed=seed,
                runs=(runs or {}).get(name, ()),
            )
        )
    return out


def scale(name: str, v: float) -> float:
    """Seconds to milliseconds for display; rates stay as they are."""
    return v if metric_kind(name) in HIGHER_IS_BETTER else 1000 * v
