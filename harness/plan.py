"""Schedules expand into concrete batches: pure and seeded, so every run of a suite sends the same batches."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from .suite import Schedule, Suite


@dataclass(frozen=True)
class Batch:
    id: str  # "<schedule>/<index>", unique within a suite
    schedule: str  # schedule name
    kind: str  # schedule kind
    prompt_ids: tuple[str, ...]  # in batch order: position i is row i
    needle: str = ""  # the target prompt of a needle batch
    repeat: int = 0  # pass over the schedules (perf suites run several)
    warmup: bool = False  # a warm-up pass: run, recorded, excluded from analysis


def _chunks(ids: list[str], size: int) -> list[tuple[str, ...]]:
    size = size or len(ids)
    return [tuple(ids[i : i + size]) for i in range(0, len(ids), size)]


def _rng(s: Schedule) -> random.Random:
    # One stream per schedule: adding a schedule never reshuffles another.
    return random.Random(f"{s.seed}/{s.name}")


def expand_schedule(s: Schedule, ids: list[str]) -> list[Batch]:
    rng = _rng(s)
    groups: list[tuple[tuple[str, ...], str]] = []
    if s.kind == "solo":
        groups = [((i,), "") for i in ids]
    elif s.kind == "repeat":
        groups = [(c, "") for _ in range(s.count) for c in _chunks(ids, s.batch_size)]
    elif s.kind == "permutation":
        for _ in range(s.count):
            order = ids[:]
            rng.shuffle(order)
            groups += [(c, "") for c in _chunks(order, s.batch_size)]
    elif s.kind == "batch-sizes":
        for size in s.sizes:
            order = ids[:]
            rng.shuffle(order)
            groups += [(c, "") for c in _chunks(order, size)]
    elif s.kind == "needle":
        hi = s.max_size or len(ids)
        for t in range(s.trials):
            target = s.prompt or ids[t % len(ids)]
            size = rng.randint(s.min_size, hi)
            position = rng.randrange(size)
            fillers = rng.sample([i for i in ids if i != target], size - 1)
            groups.append((tuple(fillers[:position] + [target] + fillers[position:]), target))
    else:  # the suite validator rejects unknown kinds; this guards new kinds added there only
        raise ValueError(f"no expansion for schedule kind {s.kind!r}")
    return [Batch(f"{s.name}/{n}", s.name, s.kind, g, needle) for n, (g, needle) in enumerate(groups)]


def expand(suite: Suite) -> list[Batch]:
    """Every schedule, once per pass: `perf.warmup` warm-up passes, then `perf.repeats` measured ones."""
    ids = [p.id for p in suite.prompts]
    once = [b for s in suite.schedules for b in expand_schedule(s, ids)]
    warmup, repeats = (suite.perf.warmup, suite.perf.repeats) if suite.perf else (0, 1)
    if warmup + repeats == 1:
        return once
    return [
        dataclasses.replace(b, id=f"{b.id}#{k}", repeat=k - warmup, warmup=k < warmup)
        for k in range(warmup + repeats)
        for b in once
    ]


def count_sequences(batches: list[Batch]) -> int:
    return sum(len(b.prompt_ids) for b in batches)
