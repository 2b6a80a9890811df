"""Latency verdicts that survive a shared runner: against the baseline's runs (not only its samples), with one
false-alarm budget for the whole run, and a row decided by passes that ran beside a busy neighbour called
`noisy` rather than `regressed`. Pure functions over records, worker meta and baselines."""

from __future__ import annotations

import dataclasses
from collections.abc import Set
from typing import Any

from . import hostnoise
from .analysis import latency, stats
from .baselines import Baseline
from .jobs import JobOutcome
from .records import Record
from .suite import Perf


def noisy_passes(meta: dict[str, Any], share: float) -> dict[int, dict[str, Any]]:
    """Measured passes (by repeat) during which other processes used more than `share` of the host's CPU."""
    return {
        p["repeat"]: p for p in meta.get("passes", []) if not p.get("warmup") and p.get("others_share", 0.0) > share
    }


def after_samples(records: list[Record], meta: dict[str, Any], skip: Set[int] = frozenset()) -> dict[str, list[float]]:
    """This run's samples per metric (load time included), leaving out the passes in `skip`."""
    out = latency.samples([r for r in records if r.repeat not in skip])
    if "load_s" in meta:
        out["load"] = [sum(meta["load_s"].values())]
    return out


def against(perf: Perf, b: Baseline, records: list[Record], meta: dict[str, Any], seed: int) -> list[stats.Change]:
    """One profile's rows against its baseline, each judged against the baseline's run-to-run spread where it
    holds several runs; thresholds calibrated on this runner take precedence over the suite's."""
    before = {**b.latency, **({"load": b.load_s} if b.load_s else {})}
    return latency.gate(
        before,
        after_samples(records, meta),
        {**dict(perf.thresholds), **b.thresholds},
        perf.threshold,
        perf.budget,
        seed=seed,
        runs=b.run_medians(),
    )


def ungated(rows: list[stats.Change]) -> list[stats.Change]:
    """Rows against another hardware's baseline: the figures stay, the verdict is `x` (a timing from another
    machine is no evidence of a regression or an improvement)."""
    return [
        dataclasses.replace(c, status="not comparable", note="other hardware: shown, not gated")
        if c.status in ("regressed", "improved", "~")
        else c
        for c in rows
    ]


def decide(rows: dict[str, list[stats.Change]], budget: float) -> tuple[dict[str, list[stats.Change]], float]:
    """The run's gated rows, all profiles together, under one family-wise budget (Holm)."""
    flat = [(p, c) for p, cs in rows.items() for c in cs]
    decided, alpha = stats.family([c for _, c in flat], budget)
    out: dict[str, list[stats.Change]] = {p: [] for p in rows}
    for (p, _), c in zip(flat, decided):
        out[p].append(c)
    return out, alpha


def _why(noisy: dict[int, dict[str, Any]]) -> str:
    return "; ".join(f"pass {k}: {hostnoise.describe(v)}" for k, v in sorted(noisy.items()))


def recheck(
    rows: list[stats.Change], without_noise: list[stats.Change], noisy: dict[int, dict[str, Any]], alpha: float
) -> list[stats.Change]:
    """A regressed or improved row that does not hold once the noisy passes are left out is `noisy`: not a pass,
    not a failure; the note says what was running. One that still holds keeps its status and says so."""
    if not noisy:
        return rows
    clean = {c.metric: c.decided(alpha) for c in without_noise}
    out = []
    for c in rows:
        if c.status not in ("regressed", "improved"):
            out.append(c)
            continue
        again = clean.get(c.metric)
        if again is not None and again.status == c.status:
            out.append(dataclasses.replace(c, note=_join(c.note, f"holds without the {len(noisy)} noisy passes")))
        else:
            out.append(
                dataclasses.replace(
                    c,
                    status="noisy",
                    note=_join(c.note, f"decided by noisy passes ({_why(noisy)}); rerun on a quiet runner to confirm"),
                )
            )
    return out


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def cost(
    perf: Perf,
    jobs: dict[str, JobOutcome],
    records: dict[str, list[Record]],
    seed: int,
    profile: str = "deterministic",
) -> list[stats.Change]:
    """`profile` (the one whose switches act on this path: profiles.cost_profile) against the default one in the same
    run (their passes interleaved): the determinism cost. A pass that was noisy on either side is left out of both,
    since they ran side by side; when every pass was noisy, a row that moved is `noisy`, not a cost."""
    if "default" not in records or profile not in records:
        return []
    noisy = {
        **noisy_passes(jobs["default"].meta, perf.noise_share),
        **noisy_passes(jobs[profile].meta, perf.noise_share),
    }

    def rows(skip: set[int]) -> list[stats.Change]:
        return latency.gate(
            latency.samples([r for r in records["default"] if r.repeat not in skip]),
            latency.samples([r for r in records[profile] if r.repeat not in skip]),
            dict(perf.thresholds),
            perf.threshold,
            perf.alpha,
            seed=seed,
        )

    if not noisy:
        return rows(set())
    clean = rows(set(noisy))
    if clean and all(c.n_before and c.n_after for c in clean):
        return [dataclasses.replace(c, note=_join(c.note, f"{len(noisy)} noisy passes left out")) for c in clean]
    return recheck(rows(set()), [], noisy, perf.alpha)


def reference(
    perf: Perf, jobs: dict[str, JobOutcome], records: dict[str, list[Record]], seed: int
) -> dict[str, list[stats.Change]]:
    """Every other profile against `perf.reference` measured in this run, interleaved: per metric, with P >= 2
    processes per profile the paired test of their process medians (processes as the unit; the load time of each
    process too), with one process per profile the Mann-Whitney test of the sequences, as the determinism cost.
    Undecided: the run's one false-alarm budget decides them with the stored-baseline rows (against._decide)."""
    from . import processes

    ref = perf.reference
    if not ref or ref not in records:
        return {}
    out: dict[str, list[stats.Change]] = {}
    for prof, recs in records.items():
        if prof == ref or prof not in jobs:
            continue
        if perf.units < 2:
            out[prof] = latency.gate(
                latency.samples(records[ref]), latency.samples(recs), {}, perf.reference_threshold, 1.0, seed=seed
            )
            continue
        per = perf.repeats
        a = processes.medians(records[ref], per, latency.sequence_metrics)
        b = processes.medians(recs, per, latency.sequence_metrics)
        a["load"], b["load"] = processes.load_times(jobs[ref].meta), processes.load_times(jobs[prof].meta)
        out[prof] = [
            stats.paired(
                name,
                list(zip(a[name], b[name])),
                threshold=perf.reference_threshold,
                alpha=1.0,  # undecided here: `decide` applies the run's budget
                higher_is_better=latency.metric_kind(name) in latency.HIGHER_IS_BETTER,
            )
            for name in sorted(set(a) & set(b))
            if latency.metric_kind(name) != "itl"
        ]
    return out
