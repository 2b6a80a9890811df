"""Processes as the unit: round i's process of a job, one outcome per profile from its rounds, per-process medians."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness import processes
from harness.analysis import latency
from harness.jobs import JobOutcome
from harness.plan import Batch

from .helpers import job, record


def _job(tmp_path: Path):
    batches = (
        Batch("solo/0", "solo", "solo", ("a",), repeat=0, warmup=True),
        *(Batch(f"solo/{k}", "solo", "solo", ("a", "b"), repeat=r) for r in range(3) for k in range(2)),
    )
    j = job()
    return type(j)(
        **{
            **j.__dict__,
            "batches": batches,
            "records": str(tmp_path / "r.jsonl"),
            "meta": str(tmp_path / "default.meta.json"),
        }
    )


def test_a_later_round_numbers_its_passes_on_and_keeps_its_own_files(tmp_path: Path):
    j = _job(tmp_path)
    assert processes.passes_per_process(j) == 3
    assert processes.for_round(j, 0) is j
    r2 = processes.for_round(j, 2)
    assert r2.name == "default.p2" and r2.records == j.records and r2.meta.endswith("default.p2.meta.json")
    assert sorted({b.repeat for b in r2.batches if not b.warmup}) == [6, 7, 8]
    assert {processes.process_of(b.repeat, 3) for b in r2.batches if not b.warmup} == {2}
    assert r2.expected == j.expected


def _out(name: str, status: str, completed: int, meta: dict) -> JobOutcome:
    return JobOutcome(name, "default", status, 0, 10.0, 13, completed, "r", "l", meta=meta)


def test_rounds_merge_into_one_outcome(tmp_path: Path):
    j = _job(tmp_path)
    m0 = {
        "pid": 1,
        "load_s": {"weights": 1.0, "tokenizer": 0.5},
        "passes": [{"repeat": 0}],
        "device": {"device": "cpu"},
    }
    m1 = {"pid": 2, "load_s": {"weights": 2.0}, "passes": [{"repeat": 3}], "run_s": 4.0}
    out = processes.merge(j, [_out("default", "ok", 13, m0), _out("default.p1", "ok", 13, m1)])
    assert out.ok and out.name == "default" and out.completed == 26 and out.expected == 26 and out.wall_s == 20.0
    assert out.meta["device"] == {"device": "cpu"} and [p["repeat"] for p in out.meta["passes"]] == [0, 3]
    assert processes.load_times(out.meta) == [1.5, 2.0]
    bad = processes.merge(j, [_out("default", "ok", 13, m0), _out("default.p1", "crashed", 5, m1)])
    assert bad.status == "crashed" and bad.name == "default" and bad.completed == 18


def test_medians_per_process_stay_aligned():
    recs = [record("a", repeat=r, token_times=[0.1 * (1 + r // 2) * (i + 1) for i in range(4)]) for r in range(6)] + [
        record("a", repeat=0, warmup=True, token_times=[9.0, 9.1, 9.2, 9.3])
    ]
    med = processes.medians(recs, 2, latency.sequence_metrics)
    assert med["solo tpot"] == pytest.approx([0.1, 0.2, 0.3])
    gap = processes.medians([recs[0], recs[4]], 2, latency.sequence_metrics)  # process 1 left no sequence
    assert len(gap["solo e2e"]) == 3 and math.isnan(gap["solo e2e"][1])
