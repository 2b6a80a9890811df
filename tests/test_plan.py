from __future__ import annotations

from collections import Counter

import pytest

from harness import plan
from harness.suite import Schedule

IDS = [f"p{i}" for i in range(11)]


def sched(kind: str, **kw) -> Schedule:
    return Schedule(kind=kind, name=kw.pop("name", kind), seed=kw.pop("seed", 7), **kw)


def passes(batches: list[plan.Batch], per_pass: int) -> list[list[str]]:
    flat = [i for b in batches for i in b.prompt_ids]
    return [flat[k : k + per_pass] for k in range(0, len(flat), per_pass)]


@pytest.mark.parametrize(
    "s, npasses",
    [
        (sched("solo"), 1),
        (sched("repeat", count=3, batch_size=4), 3),
        (sched("permutation", count=4, batch_size=3), 4),
        (sched("permutation", count=2, batch_size=0), 2),
        (sched("batch-sizes", sizes=(2, 3, 5, 16)), 4),
    ],
)
def test_every_prompt_exactly_once_per_pass(s, npasses):
    batches = plan.expand_schedule(s, IDS)
    ps = passes(batches, len(IDS))
    assert len(ps) == npasses
    for p in ps:
        assert sorted(p) == sorted(IDS)
    assert len({b.id for b in batches}) == len(batches)


def test_batch_sizes_chunking():
    batches = plan.expand_schedule(sched("batch-sizes", sizes=(3, 16)), IDS)
    assert [len(b.prompt_ids) for b in batches] == [3, 3, 3, 2, 11]


def test_seeded_and_reproducible():
    s = sched("permutation", count=4, batch_size=0)
    a, b = plan.expand_schedule(s, IDS), plan.expand_schedule(s, IDS)
    assert a == b
    orders = {x.prompt_ids for x in a}
    assert len(orders) == 4  # four distinct orders
    other = plan.expand_schedule(sched("permutation", count=4, batch_size=0, seed=8), IDS)
    assert [x.prompt_ids for x in other] != [x.prompt_ids for x in a]


def test_schedules_have_independent_streams():
    s = sched("needle", trials=6, min_size=2, max_size=0, prompt="")
    alone = plan.expand_schedule(s, IDS)
    renamed = plan.expand_schedule(sched("needle", name="needle-2", trials=6, min_size=2, max_size=0, prompt=""), IDS)
    assert alone == plan.expand_schedule(s, IDS)
    assert [b.prompt_ids for b in renamed] != [b.prompt_ids for b in alone]


def test_needle_positions_cover_the_batch():
    s = sched("needle", trials=60, min_size=4, max_size=4, prompt="p3")
    batches = plan.expand_schedule(s, IDS)
    positions = Counter(b.prompt_ids.index("p3") for b in batches)
    assert set(positions) == {0, 1, 2, 3}
    for b in batches:
        assert b.needle == "p3" and len(b.prompt_ids) == 4
        assert b.prompt_ids.count("p3") == 1 and len(set(b.prompt_ids)) == 4


def test_needle_random_sizes_and_each_prompt_in_turn():
    batches = plan.expand_schedule(sched("needle", trials=22, min_size=2, max_size=0, prompt=""), IDS)
    assert [b.needle for b in batches] == IDS + IDS
    sizes = {len(b.prompt_ids) for b in batches}
    assert min(sizes) >= 2 and max(sizes) <= len(IDS) and len(sizes) > 3


def test_count_sequences():
    batches = plan.expand_schedule(sched("repeat", count=2, batch_size=0), IDS)
    assert plan.count_sequences(batches) == 22


def _suite(schedules: list[Schedule], *, prompts: int = 3, max_new: int = 8, perf=None):
    from harness.suite import Generation, ModelSpec, Profile, Prompt, Suite

    return Suite(
        name="s",
        path="s.toml",
        model=ModelSpec(),
        generation=Generation(max_new_tokens=max_new),
        prompts=tuple(Prompt(id=f"p{i}", text="x") for i in range(prompts)),
        schedules=tuple(schedules),
        profiles=(Profile(name="default"),),
        perf=perf,
    )


def test_the_plan_size_is_known_without_expanding_it():
    """A billion permutations are counted, not drawn: size_problem answers at once, and expand refuses too."""
    import time

    from harness.suite import Perf, SuiteError

    huge = _suite([sched("solo"), sched("permutation", count=10**9)])
    t = time.monotonic()
    key, msg = plan.size_problem(huge)
    assert time.monotonic() - t < 1
    assert key == "schedules[1].count" and f"{plan.MAX_SEQUENCES:,} sequences" in msg and "\n" not in msg
    with pytest.raises(SuiteError, match=r"s.toml: schedules\[1\].count: 1000000000 gives 3,000,000,000 sequences"):
        plan.expand(huge)
    assert plan.size_problem(_suite([sched("solo")], perf=Perf(repeats=10**7)))[0] == "perf.repeats"
    assert plan.size_problem(_suite([sched("needle", trials=10**6, min_size=2)]))[0] == "schedules[0].trials"
    assert plan.size_problem(_suite([sched("solo")], prompts=plan.MAX_SEQUENCES + 1))[0] == "prompts"
    # exactly at the bound is accepted, and the count of sequences is what expand makes
    at = _suite([sched("repeat", count=plan.MAX_TOKENS // 3 // 100)], max_new=100)
    assert plan.size_problem(at) is None
    for s in [
        sched("solo"),
        sched("repeat", count=3),
        sched("permutation", count=2),
        sched("batch-sizes", sizes=(2, 5)),
    ]:
        assert plan.schedule_sequences(s, len(IDS)) == plan.count_sequences(plan.expand_schedule(s, IDS))
    needle = sched("needle", trials=9, min_size=2, max_size=5, prompt="")
    assert plan.count_sequences(plan.expand_schedule(needle, IDS)) <= plan.schedule_sequences(needle, len(IDS))


@pytest.mark.parametrize(
    "name", ["determinism.toml", "determinism-bf16.toml", "perf.toml", "serving.toml", "vllm.toml"]
)
def test_shipped_suites_are_far_inside_the_bound(name):
    from harness.suite_parse import load

    from .helpers import ROOT

    s = load(ROOT / "suites" / name)
    n = plan.count_sequences(plan.expand(s))
    assert n * 100 < plan.MAX_SEQUENCES and n * s.generation.max_new_tokens * 100 < plan.MAX_TOKENS


def test_context_problem_names_the_first_prompt_and_the_rest():
    ctx = (32, "max_position_embeddings in m/config.json")
    assert plan.context_problem([("a", 28), ("b", 3)], 4, ctx) == ""
    msg = plan.context_problem([("a", 29), ("b", 3), ("c", 40)], 4, ctx)
    assert msg.startswith("prompt 'a' (and 1 more): 29 tokens + generation.max_new_tokens 4 = 33 exceed")
    assert "context of 32 tokens (max_position_embeddings in m/config.json)" in msg
