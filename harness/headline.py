"""Each kind's headline figures for the run history: one history.Headline per profile (or load-time setting).

Metric names (CSV columns), values in milliseconds for times within a run, seconds for loads:
`<property>.share_bitwise`, `<property>.share_tokens`, `<property>.max_unique` (determinism),
`<schedule>.<ttft|tpot|e2e|tok_s>.<p50|p99>` (latency), `tok_s` (the worker's generated tokens per second),
`load.<phase>` (seconds), `cost.<schedule>.<metric>` (the cost profile over default, same run: profiles.cost_profile),
`<model>.<warm|cold>.p50`, `<model>.<phase>.p50`, `<model>.peak_rss_mb` (load time).
"""

from __future__ import annotations

import math

from .analysis import latency
from .devicekey import device_key
from .history import Headline, environment, model_hash
from .loadtime.data import LoadRun
from .report import RunResult


def from_run(res: RunResult) -> list[Headline]:
    out = []
    cost = {f"cost.{c.metric.replace(' ', '.')}": c.ratio for c in res.cost if math.isfinite(c.ratio) and c.n_before}
    cost_profile = res.cost_profile
    for j in res.jobs:
        info = j.meta.get("device") or {}
        if not info:
            continue  # the worker never started: nothing it measured, and no environment to file it under
        m: dict[str, float] = {}
        for v in res.all_verdicts():
            mine = v.profile == j.profile and v.tp == j.tp  # a profile at TP 3 is its own series, not TP 1's
            if mine and v.sequences and v.expect != "-" and v.property != "input-limit":
                m[f"{v.property}.share_bitwise"] = v.share_bitwise
                m[f"{v.property}.share_tokens"] = v.share_tokens
                if v.unique_outputs:
                    m[f"{v.property}.max_unique"] = float(v.max_unique)
        for name, xs in res.latency.get(j.profile, {}).items():
            sched, kind = name.rsplit(" ", 1)
            if kind == "itl" or not xs:
                continue
            pct = latency.percentiles(xs)
            for stat in ("p50", "p99"):
                m[f"{sched}.{kind}.{stat}"] = latency.scale(name, pct[stat])
        if j.meta.get("tokens_per_s"):
            m["tok_s"] = float(j.meta["tokens_per_s"])
        for phase, s in (j.meta.get("load_s") or {}).items():
            m[f"load.{phase}"] = float(s)
        if j.profile == cost_profile:
            m.update(cost)
        suite = res.suite
        out.append(
            Headline(
                suite=suite.name,
                profile=j.name,  # the profile, or profile-tpN when a suite runs several degrees
                hardware=device_key(info, pinned=False).hardware,  # a history is one machine's, pinned or not
                env=environment(info),
                metrics=m,
                model=suite.model.ref,
                model_hash=_model_hash(res, j.name),
            )
        )
    return out


def _model_hash(res: RunResult, job_name: str) -> str:
    """Of the model directory the job loaded (its Job file says which)."""
    from pathlib import Path

    from .jobs import Job

    try:
        job = Job.from_json((res.run_dir / "jobs" / f"{job_name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError):
        return ""
    return model_hash(Path(job.model_dir)) if job.model_dir else ""


def from_loadrun(run: LoadRun) -> list[Headline]:
    if not run.device_info:
        return []
    s = run.suite
    out = []
    for st in s.settings:
        m: dict[str, float] = {}
        for x in run.summaries:
            if x.setting != st:
                continue
            m[f"{x.model}.warm.p50"] = x.warm_p50
            m[f"{x.model}.cold.p50"] = x.cold_p50
            m.update({f"{x.model}.{p}.p50": v for p, v in x.phases_p50.items()})
            m[f"{x.model}.peak_rss_mb"] = x.peak_rss_mb
        out.append(
            Headline(
                suite=s.name,
                profile=f"omp-{st}",
                hardware=device_key(run.device_info).hardware,
                env=environment(run.device_info),
                metrics={k: v for k, v in m.items() if math.isfinite(v)},
                model=s.model_ref,
                model_hash=model_hash(run.targets[0].model_dir) if run.targets else "",
            )
        )
    return out
