"""Per-sequence latency metrics from records."""

import pytest

from harness.analysis import latency

from .helpers import record


def _rec(times, schedule="solo", warmup=False):
    """A solo sequence with one token per time in `times`, under the schedule named `schedule`."""
    return record("a", tokens=range(len(times)), token_times=times, schedule=schedule, warmup=warmup)


def test_metrics_of_one_sequence():
    m = latency.sequence_metrics(_rec([0.1, 0.15, 0.2, 0.25]))
    assert m["ttft"] == pytest.approx(0.1)
    assert m["tpot"] == pytest.approx(0.05)
    assert m["e2e"] == pytest.approx(0.25)
    assert m["tok_s"] == pytest.approx(16.0)


def test_samples_skip_warmups_and_keep_itl_raw():
    s = latency.samples([_rec([0.1, 0.2]), _rec([9.0, 9.5], warmup=True), _rec([0.3, 0.4, 0.6], schedule="b")])
    assert s["solo ttft"] == [pytest.approx(0.1)]
    assert s["b itl"] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert "solo tpot" in s and len(s["solo tpot"]) == 1


def test_a_single_token_has_no_tpot():
    assert "solo tpot" not in latency.samples([_rec([0.1])])


def test_percentiles():
    q = latency.percentiles([float(i) for i in range(1, 101)])
    assert q["n"] == 100 and q["p50"] == pytest.approx(50.5) and q["p99"] == pytest.approx(99.01)
