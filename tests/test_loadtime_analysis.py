"""Load-time analysis on synthetic samples: the recommendation picks the minimum, ties are `~`."""

import numpy as np
import pytest

from harness.loadtime import analysis as lt


def _samples(
    medians: dict[str, float], n: int = 6, sd: float = 0.02, model: str = "m", cold: bool = False, seed: int = 0
):
    rng = np.random.default_rng(seed)
    out = []
    for st, mu in medians.items():
        for r in range(n):
            x = float(rng.normal(mu, sd))
            out.append(
                lt.LoadSample(
                    model=model,
                    setting=st,
                    repeat=r,
                    cold=cold,
                    status="ok",
                    phases={"import": 1.0, "read": x - 1.5, "to_device": 0.2, "first_forward": 0.3},
                    peak_rss_mb=900.0,
                )
            )
    return out


def test_recommendation_picks_the_minimum_and_reports_the_speedup():
    s = _samples({"1": 2.0, "2": 3.0, "unset": 4.0})
    r = lt.recommend(s, "m", ["1", "2", "unset"])
    assert r.setting == "1" and r.lines == ["export OMP_NUM_THREADS=1"]
    assert r.speedup == pytest.approx(2.0, rel=0.05) and r.speedup_ci[0] < r.speedup < r.speedup_ci[1]
    assert r.ties == [] and {c.status for c in r.comparisons} == {"regressed"}


def test_settings_that_cannot_be_told_apart_are_ties():
    s = _samples({"1": 2.0, "2": 2.001, "unset": 2.002}, sd=0.05)
    r = lt.recommend(s, "m", ["1", "2", "unset"])
    assert len(r.ties) == 2 and "cannot be told apart" in r.describe()


def test_failed_loads_are_counted_not_used():
    s = _samples({"1": 2.0, "unset": 2.5}) + [
        lt.LoadSample(model="m", setting="1", repeat=9, cold=False, status="crashed")
    ]
    summary = {x.setting: x for x in lt.summarise(s, "m", ["1", "unset"])}
    assert summary["1"].failed == 1 and summary["1"].n_warm == 6
    assert summary["1"].phases_p50["import"] == 1.0 and summary["unset"].n_cold == 0
    assert lt.recommend(s, "m", ["1", "unset"]).setting == "1"


def test_size_row_efficiency_is_read_time_over_load_time():
    s = _samples({"1": 3.0}, sd=0.0) + _samples({"1": 5.0}, sd=0.0, cold=True)
    row = lt.size_row(s, "m", 1.0, 2.0, read_s=1.75, read_cold=True, setting="1")
    assert row.warm_p50 == pytest.approx(2.0) and row.cold_p50 == pytest.approx(4.0)  # import excluded
    assert row.load_gbps == pytest.approx(1.0) and row.efficiency == pytest.approx(1.75 / 4.0)
