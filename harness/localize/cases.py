"""Which cases to localise, from a run folder's jobs and records: torch-free, no process started.

A case is one compared sequence and its reference, as the determinism analysis paired them (harness.analysis.
determinism): for batch invariance the prompt's solo batch against the batch it was compared in, for repeatability
the first run of a batch against its repeat. Each side carries what a replay needs: the batch's prompts in row
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

PROPERTIES = ("repeatability", "batch-invariance")  # what a job's own records can localise (tp-invariance: not yet)
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


def _cases(run: JobRun, prop: str, prompt: str | None, batch: str | None) -> tuple[list[Case], int]:
    """Every non-bitwise comparison of one property in one job, as cases (and how many comparisons matched)."""
    recs = [r for r in run.records if not r.failed]
    verdict = determinism.evaluate(recs, run.job.profile, prop, "report", k=run.job.top_logprobs)
    comps = [
        c
        for c in verdict.comparisons
        if (prompt is None or c.prompt_id == prompt) and (batch is None or c.batch_id == batch)
    ]
    refs, _ = determinism.references(recs, prop)
    batches: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        batches[r.batch_id].append(r)
    cases = []
    for c in comps:
        if c.level == "bitwise" or c.first_bit_step is None or c.unit != "step":
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
                first_bit_step=c.first_bit_step,
                first_token_step=c.first_token_step,
                reference=_side(ref, batches[ref.batch_id]),
                compared=_side(other, batches[c.batch_id]),
            )
        )
    return cases, len(comps)


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
    each profile and property (filtered by --profile, --prompt, --batch), worst first, at most `max_cases`. Only
    single-device jobs: a tensor parallel group's records are compared with TP 1 elsewhere. `wanted`: only these
    (profile, property) pairs (the end of a run: the properties that failed or were only close). An empty list: every
    comparison is bitwise (nothing to localise). A name not in the run, or a named case that is bitwise: exit 2."""
    single = [r for r in runs if r.job.tp == 1]
    if profile is not None:
        profiles = sorted({r.job.profile for r in runs})
        if profile not in profiles:
            raise HarnessError(f"profile {profile!r} is not in this run (it has {_listed(profiles)})", USAGE)
        single = [r for r in single if r.job.profile == profile]
        if not single:
            raise HarnessError(
                f"profile {profile!r} ran only as a tensor parallel group here: localising TP N against TP 1 is not "
                "supported yet (docs/localize.md)",
                USAGE,
            )
    if prompt is not None and not any(r.prompt_id == prompt for run in single for r in run.records):
        ids = sorted({r.prompt_id for run in single for r in run.records})
        raise HarnessError(f"prompt {prompt!r} is not in this run's records (it has {_listed(ids)})", USAGE)
    if batch is not None and not any(r.batch_id == batch for run in single for r in run.records):
        ids = sorted({r.batch_id for run in single for r in run.records})
        raise HarnessError(f"batch {batch!r} is not in this run's records (it has {_listed(ids)})", USAGE)
    worst: list[Case] = []
    matched = 0
    for run in single:
        for prop in PROPERTIES:
            if wanted is not None and (run.job.profile, prop) not in wanted:
                continue
            found, n = _cases(run, prop, prompt, batch)
            matched += n
            if found:
                worst.append(min(found, key=_severity))
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
