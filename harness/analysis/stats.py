"""Regression statistics that do not cry wolf on a noisy runner.

A metric regresses only when two things hold: the ratio of medians is worse than the threshold, and the
difference is significant. Samples within one run share that run's state (clock, neighbours, cache), so when
the baseline holds several runs, significance means "unlike the baseline's runs": the new run's median against
a prediction interval of the baseline runs' medians (log scale, Student t). With one baseline run the between-run
spread is unknown, and a Mann-Whitney U test of the samples stands in (it sees within-run noise only; the
threshold absorbs the drift). One run gates many rows, so the run has one false-alarm budget (Holm-Bonferroni
over its gated rows), not one per row. The ratio carries a seeded bootstrap 95% interval, and each row reports the
smallest change it could detect, so a quiet `~` on a noisy box is not mistaken for proof of no change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from scipy import stats

from ..status import ChangeStatus

MARKS: dict[ChangeStatus, str] = {
    "regressed": "+",
    "improved": "-",
    "~": "~",
    "insufficient": "x",
    "not comparable": "x",
    "failed": "!",
    "noisy": "?",
}
_BOOT = 2000
_POWER_Z = 0.8416  # one-sided z for 80% power in the detectable-change estimate


@dataclass(frozen=True)
class Change:
    metric: str
    status: ChangeStatus
    n_before: int
    n_after: int
    before: float = math.nan  # median
    after: float = math.nan  # median
    ratio: float = math.nan  # after / before
    ci_low: float = math.nan  # bootstrap 95% interval of the ratio
    ci_high: float = math.nan
    p: float = math.nan  # Mann-Whitney U, two-sided
    detectable: float = math.nan  # smallest relative change these samples could detect (0.05 = 5%)
    threshold: float = 0.05
    higher_is_better: bool = False
    note: str = ""
    runs: int = 0  # baseline runs the p-value was judged against (0: the samples, Mann-Whitney)

    @property
    def mark(self) -> str:
        return MARKS[self.status]

    @property
    def worse(self) -> bool:
        return self.ratio < 1 / (1 + self.threshold) if self.higher_is_better else self.ratio > 1 + self.threshold

    @property
    def better(self) -> bool:
        return self.ratio > 1 + self.threshold if self.higher_is_better else self.ratio < 1 / (1 + self.threshold)

    def decided(self, alpha: float) -> Change:
        """The status at a per-row significance level (the run's budget decides it; see `family`)."""
        if self.status not in ("regressed", "improved", "~") or self.p != self.p:
            return self
        status: ChangeStatus = (
            "regressed" if self.worse and self.p < alpha else "improved" if self.better and self.p < alpha else "~"
        )
        return dataclasses.replace(self, status=status)


class _Sizes(TypedDict):
    """The Change fields known before anything is measured."""

    metric: str
    n_before: int
    n_after: int
    threshold: float
    higher_is_better: bool


class _Medians(TypedDict):
    before: float
    after: float
    ratio: float


def min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value an exact Mann-Whitney test can reach with these sample sizes."""
    return 2.0 / math.comb(n1 + n2, n1) if n1 and n2 else 1.0


def min_samples(alpha: float = 0.05) -> int:
    """Samples per side below which no difference could ever be significant at `alpha`."""
    n = 1
    while min_p(n, n) >= alpha:
        n += 1
    return n


def _robust_sd(x: np.ndarray) -> float:
    mad = float(np.median(np.abs(x - np.median(x))))
    return 1.4826 * mad if mad > 0 else float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def detectable_change(before: np.ndarray, after: np.ndarray, alpha: float = 0.05) -> float:
    """Relative change of the median detectable with 80% power at `alpha`, given the observed spread.

    Uses robust spreads (MAD), so one outlier on a shared runner does not blow it up.
    """
    se = math.sqrt(_robust_sd(before) ** 2 / len(before) + _robust_sd(after) ** 2 / len(after))
    z = float(stats.norm.ppf(1 - alpha / 2)) + _POWER_Z
    base = float(np.median(before))
    return z * se / abs(base) if base else math.inf


def bootstrap_ratio(before: np.ndarray, after: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    mb = np.median(before[rng.integers(0, len(before), (_BOOT, len(before)))], axis=1)
    ma = np.median(after[rng.integers(0, len(after), (_BOOT, len(after)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ma / mb
    lo, hi = np.nanpercentile(r, [2.5, 97.5])
    return float(lo), float(hi)


def between_runs(runs: Sequence[float], after: float, alpha: float) -> tuple[float, float]:
    """(p, detectable) of one run's median against the medians of earlier runs: a prediction interval on the log
    scale, so a ratio and its inverse are equally far. Needs two or more runs."""
    logs = np.log(np.asarray(runs, dtype=float))
    n, sd = len(logs), float(np.std(logs, ddof=1))
    scale = sd * math.sqrt(1 + 1 / n)
    if scale == 0:
        return (0.0 if math.log(after) != float(np.mean(logs)) else 1.0), 0.0
    t = (math.log(after) - float(np.mean(logs))) / scale
    p = float(2 * stats.t.sf(abs(t), n - 1))
    detectable = math.expm1((float(stats.t.ppf(1 - alpha / 2, n - 1)) + _POWER_Z) * scale)
    return p, detectable


CALIBRATION_FLOOR = 0.01  # a lucky quiet calibration must not make a 0.3% wobble a regression


def calibrated_threshold(run_medians: Sequence[float], alpha: float) -> float:
    """The relative change one more A/A run exceeds with probability `alpha`, from the spread of earlier runs'
    medians (the same prediction interval `between_runs` tests against). NaN with fewer than three runs."""
    logs = np.log(np.asarray([x for x in run_medians if math.isfinite(x) and x > 0], dtype=float))
    n = len(logs)
    if n < 3:
        return math.nan
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * float(np.std(logs, ddof=1)) * math.sqrt(1 + 1 / n)
    return max(CALIBRATION_FLOOR, math.expm1(half))


def family(changes: list[Change], budget: float) -> tuple[list[Change], float]:
    """Holm-Bonferroni over a run's gated rows: the chance that an A/A run flags any row stays within `budget`.
    Returns the rows with their statuses decided, and the smallest per-row alpha used (budget / rows)."""
    tested = sorted(
        (c.p, i) for i, c in enumerate(changes) if c.p == c.p and c.status in ("regressed", "improved", "~")
    )
    m = len(tested)
    if m == 0:
        return changes, budget
    alphas: dict[int, float] = {}
    rejecting = True
    for rank, (p, i) in enumerate(tested):
        level = budget / (m - rank)
        rejecting = rejecting and p <= level
        alphas[i] = level if rejecting else 0.0  # after the first acceptance nothing further is significant
    return [c.decided(alphas[i]) if i in alphas else c for i, c in enumerate(changes)], budget / m


def compare(
    metric: str,
    before: list[float],
    after: list[float],
    *,
    threshold: float = 0.05,
    alpha: float = 0.05,
    higher_is_better: bool = False,
    seed: int = 0,
    runs: Sequence[float] = (),
) -> Change:
    """`runs`: the baseline runs' medians of this metric; with two or more, p is judged against their spread."""
    a = np.asarray([x for x in before if math.isfinite(x)], dtype=float)
    b = np.asarray([x for x in after if math.isfinite(x)], dtype=float)
    base = _Sizes(
        metric=metric, n_before=len(a), n_after=len(b), threshold=threshold, higher_is_better=higher_is_better
    )
    if len(a) == 0 or len(b) == 0:
        return Change(status="failed", note="no samples on one side", **base)
    med_a, med_b = float(np.median(a)), float(np.median(b))
    ratio = med_b / med_a if med_a else math.inf
    meds = _Medians(before=med_a, after=med_b, ratio=ratio)
    good_runs = [r for r in runs if math.isfinite(r) and r > 0]
    # Against two or more baseline runs the test is on this run's median alone (one sample will do: a load);
    # only the within-run Mann-Whitney test needs samples on both sides.
    if len(good_runs) < 2 and min_p(len(a), len(b)) >= alpha:
        need = min_samples(alpha)
        return Change(
            status="insufficient",
            note=f"{len(a)} vs {len(b)} samples can never reach p < {alpha}; need at least {need} per side",
            **base,
            **meds,
        )
    lo, hi = bootstrap_ratio(a, b, seed)
    if len(good_runs) >= 2 and med_b > 0:
        p, detectable = between_runs(good_runs, med_b, alpha)
        note = ""
    else:
        p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        detectable = detectable_change(a, b, alpha)
        # one run: its run-to-run spread is unknown, so p is within-run and the threshold absorbs drift
        note = "1 baseline run: within-run p" if len(good_runs) == 1 else ""
    c = Change(
        status="~",
        ci_low=lo,
        ci_high=hi,
        p=p,
        detectable=detectable,
        note=note,
        runs=len(good_runs) if len(good_runs) >= 2 else 0,
        **base,
        **meds,
    )
    return c.decided(alpha)


def paired(
    metric: str,
    pairs: Sequence[tuple[float, float]],
    *,
    threshold: float,
    alpha: float,
    higher_is_better: bool = False,
) -> Change:
    """A candidate against a reference measured in the same run, processes as the unit: each pair is one reference
    process's median and one candidate process's, started side by side (A B, then B A) and measured interleaved,
    so drift over the run falls on both. The test is a paired t-test of the log ratios (Student, P - 1 degrees of
    freedom): what varies between processes (address-space layout, thread placement, a neighbour's minute) is inside
    its spread, instead of thousands of correlated tokens faking significance."""
    good = [(a, b) for a, b in pairs if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)]
    n = len(good)
    before = [a for a, _ in good]
    after = [b for _, b in good]
    base = _Sizes(metric=metric, n_before=n, n_after=n, threshold=threshold, higher_is_better=higher_is_better)
    if n < 2:
        return Change(status="insufficient", note=f"{n} process pair(s): a paired test needs at least 2", **base)
    d = np.log(np.asarray(after)) - np.log(np.asarray(before))
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    se = sd / math.sqrt(n)
    q = float(stats.t.ppf(0.975, n - 1))  # the interval is 95% whatever alpha the run's budget gives the row
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    c = Change(
        status="~",
        before=float(np.median(before)),
        after=float(np.median(after)),
        ratio=math.exp(mean),
        ci_low=math.exp(mean - q * se),
        ci_high=math.exp(mean + q * se),
        p=p,
        detectable=math.expm1((q + _POWER_Z) * se),
        note=f"{n} process pairs, paired",
        runs=n,
        **base,
    )
    return c.decided(alpha)
