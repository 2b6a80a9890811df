"""Timing verdicts against run-to-run drift, one false-alarm budget per run, noisy passes: synthetic runs with
known truth."""

import math

import numpy as np

from harness import baselines, timing
from harness.analysis import stats

DRIFT = 0.016  # A/A run medians on the 2-core VM drift by about 1.6% (sd) from run to run


def _run(rng: np.random.Generator, shift: float = 0.0, n: int = 24, mu: float = 0.05) -> list[float]:
    """One run's samples: the run's own level (drift) plus within-run noise much smaller than the drift."""
    level = mu * math.exp(rng.normal(0, DRIFT)) * (1 + shift)
    return list(rng.normal(level, level * 0.004, n))


def test_between_runs_knows_drift_that_the_samples_do_not():
    rng = np.random.default_rng(7)
    history = [float(np.median(_run(rng))) for _ in range(10)]
    base, new = _run(rng), _run(rng)
    within = stats.compare("solo tpot", base, new)  # Mann-Whitney: sees only within-run noise
    across = stats.compare("solo tpot", base, new, runs=history)  # against the spread of 10 earlier runs
    assert across.runs == 10 and "1 baseline run" not in across.note
    assert across.p > within.p
    assert across.detectable > within.detectable  # the honest figure: what the gate can see between runs


def test_a_single_run_baseline_says_its_spread_is_unknown():
    rng = np.random.default_rng(1)
    c = stats.compare("solo tpot", _run(rng), _run(rng), runs=[0.05])
    assert c.runs == 0 and "1 baseline run" in c.note


def test_family_budget_keeps_aa_runs_quiet_and_still_catches_a_real_regression():
    rng = np.random.default_rng(3)
    flagged_runs = 0
    for _ in range(200):  # 200 A/A runs of 16 gated rows each
        rows = []
        for m in range(16):
            history = [float(np.median(_run(rng))) for _ in range(10)]
            rows.append(stats.compare(f"s{m} tpot", _run(rng), _run(rng), threshold=0.0, runs=history))
        decided, alpha = stats.family(rows, 0.01)
        flagged_runs += any(c.status in ("regressed", "improved") for c in decided)
        assert math.isclose(alpha, 0.01 / 16)
    assert flagged_runs <= 6  # 1% budget: about 2 expected in 200, binomial tail well under 6
    history = [float(np.median(_run(rng))) for _ in range(10)]
    slow = stats.compare("solo tpot", _run(rng), _run(rng, shift=0.15), threshold=0.05, runs=history)
    decided, _ = stats.family(
        [slow] + [stats.compare(f"s{m} tpot", _run(rng), _run(rng), runs=history) for m in range(15)], 0.01
    )
    assert decided[0].status == "regressed"


def test_holm_is_step_down():
    rows = [
        stats.Change("a tpot", "~", 24, 24, 1, 1.2, 1.2, p=0.0001, threshold=0.05),
        stats.Change("b tpot", "~", 24, 24, 1, 1.2, 1.2, p=0.004, threshold=0.05),
        stats.Change("c tpot", "~", 24, 24, 1, 1.2, 1.2, p=0.02, threshold=0.05),
    ]
    decided, alpha = stats.family(rows, 0.01)
    # 0.0001 <= 0.01/3, 0.004 <= 0.01/2, 0.02 > 0.01/1: the third is not significant
    assert [c.status for c in decided] == ["regressed", "regressed", "~"] and math.isclose(alpha, 0.01 / 3)
    decided, _ = stats.family([rows[2], rows[0]], 0.001)
    assert [c.status for c in decided] == ["~", "regressed"]


def test_calibrated_threshold_covers_aa_drift_at_the_row_alpha():
    rng = np.random.default_rng(11)
    meds = [0.05 * math.exp(rng.normal(0, DRIFT)) for _ in range(10)]
    thr = stats.calibrated_threshold(meds, 0.01 / 10)
    assert 0.04 < thr < 0.15  # t(9, 0.9995) ~ 4.8 times a 1.6% spread: about 8%
    assert math.isnan(stats.calibrated_threshold(meds[:2], 0.001))
    assert stats.calibrated_threshold([0.05] * 5, 0.001) == stats.CALIBRATION_FLOOR


def test_noisy_passes_and_a_row_that_only_they_decide():
    meta = {
        "passes": [
            {"repeat": 0, "warmup": True, "others_share": 0.9},
            {"repeat": 0, "warmup": False, "others_share": 0.05},
            {"repeat": 1, "warmup": False, "others_share": 0.6, "steal_share": 0.0, "top": [["cpu-hog", 4242, 0.55]]},
        ]
    }
    noisy = timing.noisy_passes(meta, 0.25)
    assert list(noisy) == [1]  # warm-up passes are never judged
    row = stats.Change("solo tpot", "regressed", 24, 24, 0.05, 0.06, 1.2, p=1e-6, threshold=0.05)
    clean = stats.Change("solo tpot", "~", 24, 12, 0.05, 0.0501, 1.002, p=0.6, threshold=0.05)
    out = timing.recheck([row], [clean], noisy, 0.001)
    assert out[0].status == "noisy" and out[0].mark == "?" and "cpu-hog[4242] 55%" in out[0].note
    held = timing.recheck([row], [row], noisy, 0.001)
    assert held[0].status == "regressed" and "holds without" in held[0].note


def test_update_keeps_a_run_history_per_key():
    b = baselines.Baseline(
        suite="s",
        profile="p",
        case_hash="h",
        device_key="k",
        environment={},
        provenance={},
        outputs={},
        latency={"solo tpot": [0.05, 0.07, 0.06]},
        load_s=[3.0],
    )
    assert b.run_medians() == {"solo tpot": [0.06], "load": [3.0]}  # a file from before histories: one run
    b.runs = [{"solo tpot": 0.05}, {"solo tpot": 0.051, "load": 2.0}]
    assert b.run_medians() == {"solo tpot": [0.05, 0.051], "load": [2.0]}
