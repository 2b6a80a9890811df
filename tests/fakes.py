"""A fake model for runs through the real CLI in-process: nothing is prepared, no worker or server starts.

Each job writes what a real worker would (job file, log, records, meta) at the same paths, so a name that would
escape the run directory escapes here too; every prompt's output is the same in every batch."""

from __future__ import annotations

import json
from pathlib import Path

from harness import runner
from harness.jobs import Job, JobOutcome
from harness.records import Record
from harness.serving import runs as served_runs

DEVICE = {"device": "cpu", "cpu_capability": "fake", "cpu_model": "fake", "threads": 1, "torch": "0.0"}


def run_job(job: Job, env: dict, timeout_s: float, run_dir: Path, progress=lambda n: None, parallel=None) -> JobOutcome:
    if not timeout_s > 0:  # the real worker would be killed at once
        return JobOutcome.unstarted(job, "timeout")
    job_path = run_dir / "jobs" / f"{job.name}.json"
    job_path.write_text(job.to_json(), encoding="utf-8")
    log = run_dir / "logs" / f"{job.name}.log"
    log.write_text("fake worker\n", encoding="utf-8")
    n = 0
    with open(job.records, "a", encoding="utf-8") as out:
        for b in job.batches:
            for pos, pid in enumerate(b.prompt_ids):
                toks = [len(pid) % 7, 1, 2][: max(1, job.max_new_tokens)]
                out.write(
                    Record(
                        profile=job.profile,
                        prompt_id=pid,
                        schedule=b.schedule,
                        kind=b.kind,
                        batch_id=b.id,
                        batch=list(b.prompt_ids),
                        position=pos,
                        tokens=toks,
                        pieces=[str(t) for t in toks],
                        text=" ".join(map(str, toks)),
                        finish_reason="length",
                        fingerprints=[f"{t:016x}" for t in toks],
                        topk_ids=[[t, t + 1] for t in toks],
                        topk_logprobs=[[-0.1, -2.0] for _ in toks],
                        token_times=[0.01 * (i + 1) for i in range(len(toks))],
                        repeat=b.repeat,
                        warmup=b.warmup,
                    ).to_json()
                    + "\n"
                )
                n += 1
    meta = {
        "job": job.name,
        "profile": job.profile,
        "load_s": {"import": 0.01, "weights": 0.02},
        "device": DEVICE,
        "host": {},
        "env": {},
        "peak_rss_mb": 1.0,
    }
    Path(job.meta).write_text(json.dumps(meta), encoding="utf-8")
    progress(n)
    return JobOutcome(
        name=job.name,
        profile=job.profile,
        status="ok",
        returncode=0,
        wall_s=0.01,
        expected=job.expected,
        completed=n,
        records=job.records,
        log=str(log),
        meta=meta,
        tp=job.tp,
    )


def run_served_all(suite, jobs, model_dir, timeout_s, run_dir, interleave) -> list[JobOutcome]:
    return [run_job(job, {}, timeout_s, run_dir, progress) for _, job, progress in jobs]


def run_interleaved(jobs: list, timeout_s: float, run_dir: Path) -> list[JobOutcome]:
    return [run_job(job, env, timeout_s, run_dir, progress) for job, env, progress in jobs]


def install(monkeypatch, model_dir: Path) -> list[str]:
    """Fake the model, workers, servers and synthetic checkpoints; returns the list of models 'prepared'."""
    from harness.loadtime import kind as loadtime

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.safetensors").write_bytes(b"\0" * 64)
    prepared: list[str] = []

    def prepare_model(ref: str, timeout_s: float = 0) -> Path:
        prepared.append(ref)
        return model_dir

    monkeypatch.setattr(runner, "prepare_model", prepare_model)
    monkeypatch.setattr(runner, "run_job", run_job)
    monkeypatch.setattr(served_runs, "run_served_all", run_served_all)
    monkeypatch.setattr(runner, "run_interleaved", run_interleaved)
    monkeypatch.setattr(loadtime, "_prepare_synthetic", lambda size, tok: model_dir)
    return prepared
