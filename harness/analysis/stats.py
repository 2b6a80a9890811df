"""Regression statistics that do not cry wolf on a noisy runner.

A metric regresses only when two things hold: the ratio of medians is worse than
the threshold, and a Mann-Whitney U test says the two sample sets differ. The
ratio carries a seeded bootstrap 95% interval, and each comparison reports the
smallest change its samples could detect, so a quiet `~` on a noisy box is not
mistaken for proof of no change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np
from scipy import stats

ChangeStatus = Literal["regressed", "improved", "~", "insufficient", "not comparable", "failed"]
MARKS: dict[ChangeStatus, str] = {"regressed": "+", "improved": "-", "~": "~", "insufficient": "x",
                                  "not comparable": "x", "failed": "!"}
_BOOT = 2000
_POWER_Z = 0.8416  # one-sided z for 80% power in the detectable-change estimate


@dataclass(frozen=True)
class Change:
    metric: str
    status: ChangeStatus
    n_before: int
    n_after: int
    before: float = math.nan    # median
    after: float = math.nan     # median
    ratio: float = math.nan     # after / before
    ci_low: float = math.nan    # bootstrap 95% interval of the ratio
    ci_high: float = math.nan
    p: float = math.nan         # Mann-Whitney U, two-sided
    detectable: float = math.nan  # smallest relative change these samples could detect (0.05 = 5%)
    threshold: float = 0.05
    higher_is_better: bool = False
    note: str = ""

    @property
    def mark(self) -> str:
        return MARKS[self.status]


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


def compare(metric: str, before: list[float], after: list[float], *, threshold: float = 0.05, alpha: float = 0.05,
            higher_is_better: bool = False, seed: int = 0) -> Change:
    a = np.asarray([x for x in before if math.isfinite(x)], dtype=float)
    b = np.asarray([x for x in after if math.isfinite(x)], dtype=float)
    base = _Sizes(metric=metric, n_before=len(a), n_after=len(b), threshold=threshold,
                  higher_is_better=higher_is_better)
    if len(a) == 0 or len(b) == 0:
        return Change(status="failed", note="no samples on one side", **base)
    med_a, med_b = float(np.median(a)), float(np.median(b))
    ratio = med_b / med_a if med_a else math.inf
    meds = _Medians(before=med_a, after=med_b, ratio=ratio)
    if min_p(len(a), len(b)) >= alpha:
        need = min_samples(alpha)
        return Change(status="insufficient", note=f"{len(a)} vs {len(b)} samples can never reach p < {alpha}; "
                      f"need at least {need} per side", **base, **meds)
    lo, hi = bootstrap_ratio(a, b, seed)
    p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    worse = ratio < 1 / (1 + threshold) if higher_is_better else ratio > 1 + threshold
    better = ratio > 1 + threshold if higher_is_better else ratio < 1 / (1 + threshold)
    status: ChangeStatus = "regressed" if worse and p < alpha else "improved" if better and p < alpha else "~"
    return Change(status=status, ci_low=lo, ci_high=hi, p=p, detectable=detectable_change(a, b, alpha), **base,
                  **meds)
