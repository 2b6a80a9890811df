"""Load-time analysis: samples in, summaries, a recommendation and size scaling out. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..analysis import stats
from ..status import WorkerStatus

PHASES = ("import", "read", "to_device", "first_forward")


@dataclass(frozen=True)
class LoadSample:
    model: str  # "embedded" or "synthetic-0.5b"
    setting: str  # OMP_NUM_THREADS value, or "unset"
    repeat: int
    cold: bool  # page cache dropped just before this load
    status: WorkerStatus  # how its worker ended: "ok", else why not ("crashed", "timeout", "load-failed", ...)
    phases: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = math.nan
    device_peak_mb: float = math.nan
    env: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def total(self) -> float:
        return sum(self.phases.values()) if self.phases else math.nan

    @property
    def weights(self) -> float:
        """The part of a load that moves weights: read, to device, first forward (import excluded)."""
        return sum(v for k, v in self.phases.items() if k != "import") if self.phases else math.nan


def _ok(samples: list[LoadSample], model: str, setting: str, cold: bool) -> list[LoadSample]:
    return [s for s in samples if s.model == model and s.setting == setting and s.cold == cold and s.status == "ok"]


def totals(samples: list[LoadSample], model: str, setting: str, cold: bool) -> list[float]:
    return [s.total for s in _ok(samples, model, setting, cold)]


@dataclass(frozen=True)
class SettingSummary:
    model: str
    setting: str
    n_warm: int
    n_cold: int
    failed: int
    warm_p50: float
    cold_p50: float
    phases_p50: dict[str, float]  # warm medians per phase
    peak_rss_mb: float


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else math.nan


def summarise(samples: list[LoadSample], model: str, settings: list[str]) -> list[SettingSummary]:
    out = []
    for st in settings:
        warm, cold = _ok(samples, model, st, False), _ok(samples, model, st, True)
        failed = sum(1 for s in samples if s.model == model and s.setting == st and s.status != "ok")
        phases = {p: _median([s.phases[p] for s in warm if p in s.phases]) for p in PHASES}
        out.append(
            SettingSummary(
                model=model,
                setting=st,
                n_warm=len(warm),
                n_cold=len(cold),
                failed=failed,
                warm_p50=_median([s.total for s in warm]),
                cold_p50=_median([s.total for s in cold]),
                phases_p50=phases,
                peak_rss_mb=max((s.peak_rss_mb for s in warm + cold), default=math.nan),
            )
        )
    return out


@dataclass(frozen=True)
class Recommendation:
    setting: str  # the fastest setting by median warm load
    median_s: float
    speedup: float  # unset median / best median
    speedup_ci: tuple[float, float]
    ties: list[str]  # settings that cannot be told apart from the best (~)
    comparisons: list[stats.Change]  # each other setting against the best
    lines: list[str]  # what to export

    def describe(self) -> str:
        ci = f"[{self.speedup_ci[0]:.2f}, {self.speedup_ci[1]:.2f}]"
        tie = f"; cannot be told apart from {', '.join(self.ties)} (~)" if self.ties else ""
        return (
            f"fastest: OMP_NUM_THREADS={self.setting} ({self.median_s:.2f} s median warm load), "
            f"{self.speedup:.2f}x the unset default, 95% CI {ci}{tie}"
        )


def recommend(
    samples: list[LoadSample],
    model: str,
    settings: list[str],
    alpha: float = 0.05,
    threshold: float = 0.05,
    seed: int = 0,
) -> Recommendation | None:
    """The fastest setting by median warm load, compared with every other; `~` where they cannot be told apart."""
    data = {st: totals(samples, model, st, False) for st in settings}
    data = {st: xs for st, xs in data.items() if xs}
    if not data:
        return None
    best = min(data, key=lambda st: float(np.median(data[st])))
    comps = [
        stats.compare(f"OMP_NUM_THREADS={st}", data[best], xs, threshold=threshold, alpha=alpha, seed=seed)
        for st, xs in data.items()
        if st != best
    ]
    ties = [c.metric.split("=", 1)[1] for c in comps if c.status in ("~", "insufficient", "improved")]
    speedup, ci = 1.0, (1.0, 1.0)
    if "unset" in data and best != "unset":
        speedup = float(np.median(data["unset"]) / np.median(data[best]))
        ci = stats.bootstrap_ratio(np.asarray(data[best]), np.asarray(data["unset"]), seed)
    lines = ["unset OMP_NUM_THREADS"] if best == "unset" else [f"export OMP_NUM_THREADS={best}"]
    return Recommendation(
        setting=best,
        median_s=float(np.median(data[best])),
        speedup=speedup,
        speedup_ci=ci,
        ties=ties,
        comparisons=comps,
        lines=lines,
    )


@dataclass(frozen=True)
class SizeRow:
    model: str
    params_b: float
    gb: float
    warm_p50: float  # weights part of the load (import excluded), warm
    cold_p50: float
    read_s: float  # plain sequential read of the same files, cold when the cache could be dropped
    read_cold: bool

    @property
    def load_gbps(self) -> float:
        return self.gb / self.warm_p50 if self.warm_p50 > 0 else math.nan

    @property
    def efficiency(self) -> float:
        """Read time / load time: 1.0 means loading runs at the speed of reading the files."""
        t = self.cold_p50 if self.read_cold and self.cold_p50 == self.cold_p50 else self.warm_p50
        return self.read_s / t if t > 0 else math.nan


def size_row(
    samples: list[LoadSample], model: str, params_b: float, gb: float, read_s: float, read_cold: bool, setting: str
) -> SizeRow:
    w = [s.weights for s in _ok(samples, model, setting, False)]
    c = [s.weights for s in _ok(samples, model, setting, True)]
    return SizeRow(
        model=model,
        params_b=params_b,
        gb=gb,
        warm_p50=float(np.median(w)) if w else math.nan,
        cold_p50=float(np.median(c)) if c else math.nan,
        read_s=read_s,
        read_cold=read_cold,
    )
