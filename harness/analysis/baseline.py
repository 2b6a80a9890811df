"""Outputs against the golden baseline: each prompt's solo reference against the stored one. Pure functions."""
from __future__ import annotations

from typing import Callable

from ..records import Record
from .determinism import Verdict, compare, judge, lowest_level, worst


def references(records: list[Record]) -> list[Record]:
    """Each prompt's first measured solo sequence: what a baseline stores and is compared with."""
    seen: dict[str, Record] = {}
    for r in records:
        if r.kind == "solo" and not r.warmup and not r.failed:
            seen.setdefault(r.prompt_id, r)
    return list(seen.values())


def evaluate(records: list[Record], reference: Callable[[str], Record | None], profile: str, same_key: bool,
             note: str = "") -> Verdict:
    """Bitwise under the same device key; tokens only across keys (other chip, ISA or major software version)."""
    ours = references(records)
    level = lowest_level(ours)
    expect = "bitwise" if same_key and level != "text" else "tokens"
    comps = []
    for r in ours:
        ref = reference(r.prompt_id)
        if ref is not None:
            comps.append(compare(ref, r))
    status, reason = judge(expect, comps, level)
    if note:
        reason = f"{reason}; {note}"
    return Verdict(profile=profile, property="baseline", expect=expect, status=status, reason=reason,
                   sequences=len(comps), bitwise=sum(c.level == "bitwise" for c in comps),
                   token_identical=sum(c.level != "diverged" for c in comps), worst=worst(comps), level=level)


def not_comparable(profile: str, reason: str) -> Verdict:
    return Verdict(profile=profile, property="baseline", expect="-", status="not comparable", reason=reason,
                   sequences=0, bitwise=0, token_identical=0)


def missing(profile: str, where: str) -> Verdict:
    return Verdict(profile=profile, property="baseline", expect="-", status="no baseline",
                   reason=f"no baseline at {where}; create one with --update-baselines --reason '...'",
                   sequences=0, bitwise=0, token_identical=0)
