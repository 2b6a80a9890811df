"""Outputs against the golden baseline: each prompt's solo reference against the stored one. Pure functions."""

from __future__ import annotations

from collections.abc import Callable

from ..records import Record
from ..status import Expectation, VerdictStatus
from .determinism import Verdict, compare, lowest_level, verdict

BASELINE_EXPECTATIONS = ("bitwise", "tokens", "close", "report")


def references(records: list[Record]) -> list[Record]:
    """Each prompt's first measured solo sequence: what a baseline stores and is compared with."""
    seen: dict[str, Record] = {}
    for r in records:
        if r.kind == "solo" and not r.warmup and not r.failed:
            seen.setdefault(r.prompt_id, r)
    return list(seen.values())


def evaluate(
    records: list[Record],
    reference: Callable[[str], Record | None],
    profile: str,
    expect: Expectation,
    note: str = "",
    k: int | None = None,
) -> Verdict:
    """expect: what the baseline found allows (the caller picks it by tier: the same key bitwise, other software
    tokens, other hardware close). Text cannot meet it bitwise or close, so there it is judged on tokens."""
    if expect not in BASELINE_EXPECTATIONS:
        raise ValueError(f"baseline expectation must be one of {', '.join(BASELINE_EXPECTATIONS)}, got {expect!r}")
    ours = references(records)
    level = lowest_level(ours)
    if level == "text" and expect in ("bitwise", "close"):
        if expect == "close":
            note = "; ".join(
                filter(None, ["close needs logprobs and the server returned text only: tokens compared", note])
            )
        expect = "tokens"
    comps = []
    for r in ours:
        ref = reference(r.prompt_id)
        if ref is not None:
            comps.append(compare(ref, r, k))
    return verdict(profile, "baseline", expect, comps, level, note)


def not_comparable(profile: str, reason: str) -> Verdict:
    return _unjudged(profile, "not comparable", reason)


def missing(profile: str, reason: str) -> Verdict:
    return _unjudged(profile, "no baseline", reason)


def _unjudged(profile: str, status: VerdictStatus, reason: str) -> Verdict:
    return Verdict(
        profile=profile,
        property="baseline",
        expect="-",
        status=status,
        reason=reason,
        sequences=0,
        bitwise=0,
        token_identical=0,
    )
