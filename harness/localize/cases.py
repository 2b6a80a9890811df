"""Which cases to localise, from a run folder's jobs and records: torch-free, no process started.

A case is one compared sequence and its reference, as the determinism analysis paired them (harness.analysis.
determinism): for batch invariance the prompt's solo batch against the batch it was compared in, for repeatability
the first run of a batch against its repeat, for tp-invariance the TP 1 job's sequence against its twin (same batch,
same row) in the profile's TP N job. Batch invariance and repeatability are localised in TP 1 jobs only: a TP N job
against itself would need both batches replayed in one worker group, which is not done. Each side carries what a replay needs: the batch's prompts in row
order, the row, and every row's recorded tokens (teacher forcing), plus the row's recorded fingerprints (to check
that the replay reproduces the run).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis import determinism
from ..errors import USAGE, HarnessError
from ..jobs import Job
from ..records import Record, read_jsonl

PROPERTIES = ("repeatability", "batch-invariance")  # what a TP 1 job's own records can localise
TP_PROPERTY = "tp-invariance"  # a profile's TP N job against its TP 1 job
MAX_SHOWN = 8  # names listed when a profile, prompt or batch is not in the run


@dataclass(frozen=True)
class Side:
    """One batch as it ran: its prompts in row order, the compared prompt's row, every row's recorded tokens, and
    that row's recorded fingerprints."""

    batch_id: str
    prompt_ids: tuple[str, ...]
    position: int
    tokens: tuple[tuple[int, ...], ...]
    fingerprints: tuple[str, ...]

    def shown(self) -> dict[str, Any]:
        """For localize.json: which batch and row, without the tokens."""
        return {"batch_id": self.batch_id, "batch": list(self.prompt_ids), "position": self.position}


@dataclass(frozen=True)
class Case:
    job: str
    profile: str
    property: str
    prompt_id: str
    level: str  # the comparison's level: tokens, close or diverged
    first_bit_step: int
    first_token_step: int | None
    reference: Side
    compared: Side
    tp: int = 1  # the compared side's degree (tp-invariance: N; its reference runs at TP 1)
    reference_job: str = ""  # tp-invariance: the TP 1 job whose records are the reference ("": `job` itself)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Case:
        sides = {
            k: Side(
                batch_id=d[k]["batch_id"],
                prompt_ids=tuple(d[k]["prompt_ids"]),
                position=d[k]["position"],
                tokens=tuple(tuple(t) for t in d[k]["tokens"]),
                fingerprints=tuple(d[k]["fingerprints"]),
            )
            for k in ("reference", "compared")
        }
        return cls(**{**d, **sides})

    def shown(self) -> dict[str, Any]:
        tp = {"tp": self.tp, "ref_tp": 1, "reference_job": self.reference_job} if self.tp > 1 else {}
        return {
            "job": self.job,
            "profile": self.profile,
            "property": self.property,
            "prompt_id": self.prompt_id,
            "level": self.level,
            "first_bit_step": self.first_bit_step,
            "first_token_step": self.first_token_step,
            "reference": self.reference.shown(),
            "compared": self.compared.shown(),
            **tp,
        }


@dataclass
class JobRun:
    """One job of the run: its Job (jobs/<job>.json) and its records (records/<job>.jsonl)."""

    job: Job
    path: Path
    records: list[Record]


def read_run(run_dir: Path) -> list[JobRun]:
    """Every job of the run folder that left records; one line and exit 2 for a folder that is not a run's."""
    if not run_dir.is_dir():
        raise HarnessError(f"{run_dir}: not a folder (give a run folder, reports/<run-id>/)", USAGE)
    out = []
    for path in sorted((run_dir / "jobs").glob("*.json")):
        if path.name.endswith(".env.json"):
            continue
        try:
            job = Job.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise HarnessError(f"{path}: not a job file the harness wrote ({type(e).__name__}: {e})", USAGE) from None
        try:
            records = [r for r in read_jsonl(run_dir / "records" / f"{job.name}.jsonl") if not r.warmup]
        except (ValueError, TypeError, KeyError) as e:
            raise HarnessError(
                f"{run_dir}/records/{job.name}.jsonl: unreadable ({type(e).__name__}: {e})", USAGE
            ) from None
        if records:
            out.append(JobRun(job, path, records))
    if not out:
        raise HarnessError(
            f"{run_dir}: no records (records/<job>.jsonl beside jobs/<job>.json): not a run folder, "
            "or no worker finished a batch",
            USAGE,
        )
    return out


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_SHOWN])
    return shown + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")


def _side(rec: Record, batch: list[Record]) -> Side:
    """A row whose record is missing gets no recorded tokens: the replay feeds it its own argmax."""
    rows = {r.position: r for r in batch}
    return Side(
        batch_id=rec.batch_id,
        prompt_ids=tuple(rec.batch),
        position=rec.position,
        tokens=tuple(tuple(rows[i].tokens) if i in rows else () for i in range(len(rec.batch))),
        fingerprints=tuple(rec.fingerprints),
    )


def _by_batch(recs: list[Record]) -> dict[str, list[Record]]:
    batches: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        batches[r.batch_id].append(r)
    return batches


def _filtered(
    comps: tuple[determinism.Comparison, ...], prompt: str | None, batch: str | None
) -> list[determinism.Comparison]:
    return [c for c in comps if (prompt is None or c.prompt_id == prompt) and (batch is None or c.batch_id == batch)]


def _first_bit_step(c: determinism.Comparison) -> int | None:
    """The step whose bits differ first, where the case can be localised (not bitwise, not a text-only comparison
    counted in characters); else None."""
    return c.first_bit_step if c.level != "bitwise" and c.unit == "step" else None


def _cases(run: JobRun, prop: str, prompt: str | None, batch: str | None) -> tuple[list[Case], int]:
    """Every non-bitwise comparison of one property in one job, as cases (and how many comparisons matched)."""
    recs = [r for r in run.records if not r.failed]
    verdict = determinism.evaluate(recs, run.job.profile, prop, "report", k=run.job.top_logprobs)
    comps = _filtered(verdict.comparisons, prompt, batch)
    refs, _ = determinism.references(recs, prop)
    batches = _by_batch(recs)
    cases = []
    for c in comps:
        if (step := _first_bit_step(c)) is None:
            continue
        ref = refs[c.prompt_id]
        other = next(r for r in batches[c.batch_id] if r.position == c.position)
        cases.append(
            Case(
                job=run.job.name,
                profile=run.job.profile,
                property=prop,
                prompt_id=c.prompt_id,
                level=c.level,
                first_bit_step=step,
                first_token_step=c.first_token_step,
                reference=_side(ref, batches[ref.batch_id]),
                compared=_side(other, batches[c.batch_id]),
            )
        )
    return cases, len(comps)


def _tp_cases(ref: JobRun, other: JobRun, prompt: str | None, batch: str | None) -> tuple[list[Case], int]:
    """Every non-bitwise twin of the TP N job against the TP 1 job (same batch, same row), as the tp-invariance
    verdict pairs them; the case belongs to the TP N job (its replay is the worker group's)."""
    a, b = [r for r in ref.records if not r.failed], [r for r in other.records if not r.failed]
    verdict = determinism.tp_invariance(
        a, b, other.job.profile, "report", tp=other.job.tp, ref_tp=ref.job.tp, k=other.job.top_logprobs
    )
    comps = _filtered(verdict.comparisons, prompt, batch)
    twins = {(r.batch_id, r.position): r for r in a}
    batches_a, batches_b = _by_batch(a), _by_batch(b)
    cases = []
    for c in comps:
        if (step := _first_bit_step(c)) is None:
            continue
        twin = twins[(c.batch_id, c.position)]
        rec = next(r for r in batches_b[c.batch_id] if r.position == c.position)
        cases.append(
            Case(
                job=other.job.name,
                profile=other.job.profile,
                property=TP_PROPERTY,
                prompt_id=c.prompt_id,
                level=c.level,
                first_bit_step=step,
                first_token_step=c.first_token_step,
                reference=_side(twin, batches_a[c.batch_id]),
                compared=_side(rec, batches_b[c.batch_id]),
                tp=other.job.tp,
                reference_job=ref.job.name,
            )
        )
    return cases, len(comps)


def tp_pairs(runs: list[JobRun]) -> list[tuple[JobRun, JobRun]]:
    """(TP 1 job, TP N job) of each profile that ran at both degrees, as tp-invariance compares them."""
    ones = {r.job.profile: r for r in runs if r.job.tp == 1}
    return [(ones[r.job.profile], r) for r in runs if r.job.tp > 1 and r.job.profile in ones]


def _severity(c: Case) -> tuple[int, int, int]:
    """Worst first: diverged, then close, then tokens; earlier first steps first."""
    return (
        -determinism.LEVEL_ORDER.index(c.level),
        c.first_token_step if c.first_token_step is not None else c.first_bit_step,
        c.first_bit_step,
    )


def select(
    runs: list[JobRun],
    *,
    profile: str | None,
    prompt: str | None,
    batch: str | None,
    max_cases: int,
    wanted: frozenset[tuple[str, str]] | None = None,
) -> list[Case]:
    """The cases to localise: with --prompt and --batch that one comparison; otherwise the worst non-bitwise case of
    each profile and property (filtered by --profile, --prompt, --batch), worst first, at most `max_cases`. Batch
    invariance and repeatability in TP 1 jobs; tp-invariance: a profile's TP N job against its TP 1 job, batch for
    batch. `wanted`: only these (profile, property) pairs (the end of a run: the properties that failed or were only
    close). An empty list: every comparison is bitwise (nothing to localise). A name not in the run, or a named case
    that is bitwise: exit 2."""
    single = [r for r in runs if r.job.tp == 1]
    pairs = tp_pairs(runs)
    if profile is not None:
        profiles = sorted({r.job.profile for r in runs})
        if profile not in profiles:
            raise HarnessError(f"profile {profile!r} is not in this run (it has {_listed(profiles)})", USAGE)
        single = [r for r in single if r.job.profile == profile]
        pairs = [(a, b) for a, b in pairs if b.job.profile == profile]
        if not single:
            degrees = sorted(r.job.tp for r in runs if r.job.profile == profile)
            raise HarnessError(
                f"profile {profile!r} ran only as a tensor parallel group here (TP {', '.join(map(str, degrees))}): "
                "tp-invariance is localised against the profile's TP 1 job, and there is none (docs/localize.md)",
                USAGE,
            )
    looked = single + [b for _, b in pairs]
    if prompt is not None and not any(r.prompt_id == prompt for run in looked for r in run.records):
        ids = sorted({r.prompt_id for run in looked for r in run.records})
        raise HarnessError(f"prompt {prompt!r} is not in this run's records (it has {_listed(ids)})", USAGE)
    if batch is not None and not any(r.batch_id == batch for run in looked for r in run.records):
        ids = sorted({r.batch_id for run in looked for r in run.records})
        raise HarnessError(f"batch {batch!r} is not in this run's records (it has {_listed(ids)})", USAGE)
    found_per: list[tuple[list[Case], int]] = [
        _cases(run, prop, prompt, batch)
        for run in single
        for prop in PROPERTIES
        if wanted is None or (run.job.profile, prop) in wanted
    ]
    found_per += [
        _tp_cases(a, b, prompt, batch) for a, b in pairs if wanted is None or (b.job.profile, TP_PROPERTY) in wanted
    ]
    worst = [min(found, key=_severity) for found, _ in found_per if found]
    matched = sum(n for _, n in found_per)
    named = " ".join(
        f"{what} {v!r}" for what, v in (("profile", profile), ("prompt", prompt), ("batch", batch)) if v is not None
    )
    if named and not matched:
        raise HarnessError(
            f"{named}: no compared sequence there (a reference batch, such as a solo one, is not compared with "
            "itself; name the batch it was compared in)",
            USAGE,
        )
    if named and not worst:
        raise HarnessError(f"{named}: bitwise identical to its reference: nothing to localise", USAGE)
    return sorted(worst, key=_severity)[:max_cases]
