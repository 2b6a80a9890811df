"""The regression statistics on synthetic samples with known truth."""

import math

import numpy as np
import pytest

from harness.analysis import latency, stats


def _noise(seed: int, n: int = 30, mu: float = 0.05, sd: float = 0.002) -> list[float]:
    return list(np.random.default_rng(seed).normal(mu, sd, n))


def test_pure_noise_is_not_significant():
    c = stats.compare("solo tpot", _noise(1), _noise(2))
    assert c.status == "~" and c.mark == "~"
    assert 0.95 < c.ratio < 1.05 and c.ci_low < 1 < c.ci_high


def test_a_shift_beyond_the_threshold_regresses_and_the_reverse_improves():
    base, slow = _noise(1), [x * 1.15 for x in _noise(2)]
    up = stats.compare("solo tpot", base, slow)
    assert up.status == "regressed" and up.mark == "+" and up.p < 0.05 and up.ci_low > 1.05
    down = stats.compare("solo tpot", slow, base)
    assert down.status == "improved" and down.mark == "-"


def test_a_significant_shift_under_the_threshold_is_not_a_regression():
    c = stats.compare("solo tpot", _noise(1, sd=0.0002), [x * 1.02 for x in _noise(2, sd=0.0002)])
    assert c.p < 0.05 and c.status == "~"


def test_higher_is_better_metrics_regress_when_they_fall():
    base = _noise(1, mu=100, sd=2)
    c = stats.compare("solo tok_s", base, [x * 0.8 for x in _noise(2, mu=100, sd=2)], higher_is_better=True)
    assert c.status == "regressed"


def test_too_few_samples_are_insufficient_not_a_pass():
    c = stats.compare("solo tpot", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert c.status == "insufficient" and c.mark == "x" and "need at least 4" in c.note
    assert math.isnan(c.p)


def test_one_sample_a_run_is_judged_against_the_baselines_runs():
    """A load: one sample per run. Alone it is insufficient; against ten baseline runs' medians it is decided."""
    runs = [4.0 * (1 + 0.02 * e) for e in np.random.default_rng(3).standard_normal(10)]
    assert stats.compare("load", runs, [4.1]).status == "insufficient"
    same = stats.compare("load", runs, [4.05], runs=runs, threshold=0.1)
    assert same.status == "~" and same.runs == 10 and same.p > 0.05 and same.detectable < 0.15
    slow = stats.compare("load", runs, [6.0], runs=runs, threshold=0.1, alpha=0.001)
    assert slow.status == "regressed" and slow.p < 0.001


def test_minimum_samples_follow_the_exact_test():
    assert stats.min_p(3, 3) == pytest.approx(0.1)
    assert stats.min_samples(0.05) == 4 and stats.min_samples(0.01) == 5


def test_detectable_change_shrinks_with_more_samples_and_grows_with_noise():
    small = stats.compare("x", _noise(1, n=10), _noise(2, n=10)).detectable
    large = stats.compare("x", _noise(1, n=200), _noise(2, n=200)).detectable
    noisy = stats.compare("x", _noise(1, n=200, sd=0.01), _noise(2, n=200, sd=0.01)).detectable
    assert large < small and noisy > large
    # 2 ms spread on 50 ms, 200 per side: (1.96 + 0.84) * sqrt(2 * 0.002**2 / 200) / 0.05 ~= 1.1%
    assert 0.007 < large < 0.016


def test_the_bootstrap_is_seeded():
    a, b = _noise(1), _noise(2)
    assert stats.compare("x", a, b, seed=7) == stats.compare("x", a, b, seed=7)


def test_one_side_empty_is_failed():
    assert stats.compare("x", [], [1.0, 2.0]).status == "failed"


def test_gate_uses_per_metric_thresholds_and_skips_itl():
    before = {"solo ttft": _noise(1), "solo tpot": _noise(3), "solo itl": _noise(5)}
    after = {
        "solo ttft": [x * 1.08 for x in _noise(2)],
        "solo tpot": [x * 1.08 for x in _noise(4)],
        "solo itl": _noise(6),
    }
    rows = {c.metric: c for c in latency.gate(before, after, {"ttft": 0.10}, 0.05)}
    assert set(rows) == {"solo ttft", "solo tpot"}
    assert rows["solo ttft"].status == "~" and rows["solo tpot"].status == "regressed"


def test_paired_processes_see_a_small_shift_that_drift_hides():
    """Drift moves both sides of each pair alike: the paired test sees a 3% shift the pooled samples cannot."""
    rng = np.random.default_rng(7)
    drift = 1 + 0.05 * rng.standard_normal(8)  # each pair's minute on the runner: +-5%
    ref = 100 * drift * (1 + 0.004 * rng.standard_normal(8))
    new = 103 * drift * (1 + 0.004 * rng.standard_normal(8))
    c = stats.paired("solo tpot", list(zip(ref, new)), threshold=0.02, alpha=0.01)
    assert c.status == "regressed" and c.p < 0.001 and c.runs == 8
    assert c.ci_low < c.ratio < c.ci_high and 1.02 < c.ratio < 1.04 and c.ci_high - c.ci_low < 0.02
    pooled = stats.compare("solo tpot", list(ref), list(new), threshold=0.02, alpha=0.01)
    assert pooled.status == "~"  # the same figures unpaired: the drift drowns it
    same = stats.paired(
        "solo tpot", list(zip(ref, ref * (1 + 0.004 * rng.standard_normal(8)))), threshold=0.02, alpha=0.01
    )
    assert same.status == "~" and abs(same.ratio - 1) < 0.01
    faster = stats.paired("solo tok_s", list(zip(ref, new)), threshold=0.02, alpha=0.01, higher_is_better=True)
    assert faster.status == "improved"


def test_paired_needs_two_pairs_and_skips_broken_ones():
    assert stats.paired("m", [(1.0, 1.1)], threshold=0.02, alpha=0.05).status == "insufficient"
    c = stats.paired(
        "m", [(1.0, 1.1), (float("nan"), 1.0), (0.0, 1.0), (1.0, 1.1), (1.0, 1.1)], threshold=0.02, alpha=0.05
    )
    assert c.runs == 3 and c.p == 0.0 and c.status == "regressed"  # no spread at all: certain
