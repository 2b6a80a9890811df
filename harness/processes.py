"""Processes as the unit of a timed comparison ([perf] processes = P): each profile is measured by P fresh worker
processes instead of one. Round i starts one process per profile, in the order A B for even rounds and B A for odd
ones, and they take turns pass by pass (runner.run_interleaved), so the rounds are pairs that ran side by side.
What varies between processes (address-space layout, hash seeds, thread placement, a neighbour's minute) then varies
between the units of the test (harness.analysis.stats.paired) instead of faking significance.

Every process of a profile appends to the profile's one records file; its passes are numbered on from the
previous process's (round i's pass r is repeat i * R + r), so everything that reads records sees one job with P x R
passes, and `process_of` recovers the round. Its meta is kept per round and merged into the job's meta at the end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, runner
from .jobs import Job, JobOutcome, env_path, save_env


def passes_per_process(job: Job) -> int:
    """R: the measured passes one process runs (its warm-up passes not counted)."""
    measured = {b.repeat for b in job.batches if not b.warmup}
    return max(measured) + 1 if measured else 1


def process_of(repeat: int, per_process: int) -> int:
    return repeat // max(per_process, 1)


def for_round(job: Job, i: int) -> Job:
    """Round i's process of `job`: its passes numbered on, its own job file, log and meta; the records file shared."""
    if i == 0:
        return job
    per = passes_per_process(job)
    return dataclasses.replace(
        job,
        name=f"{job.name}.p{i}",
        batches=tuple(dataclasses.replace(b, repeat=b.repeat + i * per) for b in job.batches),
        meta=str(Path(job.meta).with_name(f"{job.name}.p{i}.meta.json")),
    )


def merge(job: Job, outs: list[JobOutcome]) -> JobOutcome:
    """One profile's rounds as one outcome: the first failure decides its status; the meta is the first round's
    with every round's passes and, per round, its pid, load and run time."""
    first_bad = next((o for o in outs if not o.ok), None)
    metas = [o.meta for o in outs if o.meta]
    meta: dict[str, Any] = dict(metas[0]) if metas else {}
    if metas:
        meta["passes"] = [p for m in metas for p in m.get("passes", [])]
        meta["processes"] = [
            {
                "pid": m.get("pid"),
                "load_s": sum((m.get("load_s") or {}).values()),
                "run_s": m.get("run_s", 0.0),
                "tokens_per_s": m.get("tokens_per_s", 0.0),
            }
            for m in metas
        ]
    base = first_bad or outs[0]
    return dataclasses.replace(
        base,
        name=job.name,
        wall_s=sum(o.wall_s for o in outs),
        expected=job.expected * len(outs),
        completed=sum(o.completed for o in outs),
        meta=meta,
    )


def _counted(bar: Callable[[int], None], done: dict[str, int], name: str) -> Callable[[int], None]:
    """The progress of one round's process, counted on from what the profile's earlier processes completed."""
    return lambda n: bar(done[name] + n)


def run(
    jobs: list[tuple[Job, dict[str, str | None], Callable[[int], None]]],
    processes: int,
    timeout_s: float,
    run_dir: Path,
) -> list[JobOutcome]:
    """Every job by `processes` rounds of fresh workers, A B then B A; a round in which a worker failed ends the
    measurement (what ran is kept and reported)."""
    rounds: dict[str, list[JobOutcome]] = {job.name: [] for job, _, _ in jobs}
    done = {job.name: 0 for job, _, _ in jobs}
    for i in range(processes):
        order = jobs if i % 2 == 0 else jobs[::-1]
        todo = [(for_round(job, i), env, _counted(bar, done, job.name)) for job, env, bar in order]
        outs = runner.run_interleaved(todo, timeout_s, run_dir)
        for (job, _, _), out in zip(order, outs):
            rounds[job.name].append(out)
            done[job.name] += out.completed
        if not all(o.ok for o in outs):
            break
    merged = []
    for job, env, _ in jobs:
        out = merge(job, rounds[job.name])
        for k in range(1, len(rounds[job.name])):  # one job file per profile, as every reader expects
            part = run_dir / "jobs" / f"{job.name}.p{k}.json"
            part.unlink(missing_ok=True)
            env_path(part).unlink(missing_ok=True)
        whole = dataclasses.replace(
            job,
            batches=tuple(b for k in range(len(rounds[job.name])) for b in for_round(job, k).batches),
        )
        atomic.write_text(run_dir / "jobs" / f"{job.name}.json", whole.to_json())
        save_env(env_path(run_dir / "jobs" / f"{job.name}.json"), env)
        if out.meta:
            atomic.write_json(Path(job.meta), out.meta)
        merged.append(out)
    return merged


def medians(records: list[Any], per_process: int, metric: Callable[[Any], dict[str, float]]) -> dict[str, list[float]]:
    """Per metric, each process's median of its sequences' values (processes in round order; a process with no
    value for a metric gets NaN, so the pairs stay aligned)."""
    by: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r.warmup or r.failed:
            continue
        for name, v in metric(r).items():
            if math.isfinite(v):
                by.setdefault(f"{r.schedule} {name}", {}).setdefault(process_of(r.repeat, per_process), []).append(v)
    n = 1 + max((k for m in by.values() for k in m), default=-1)
    return {name: [float(np.median(m[k])) if k in m else math.nan for k in range(n)] for name, m in by.items()}


def load_times(meta: dict[str, Any]) -> list[float]:
    """Each process's model load (seconds), from the merged meta; one value for a single process."""
    if meta.get("processes"):
        return [float(p["load_s"]) for p in meta["processes"]]
    return [sum(meta["load_s"].values())] if meta.get("load_s") else []
