"""Determinism verdicts: records in, one verdict per profile and property out (the comparison of one sequence with its
reference is harness.analysis.comparison). Pure functions, no I/O, no torch."""

from __future__ import annotations

import builtins
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from ..records import Record
from ..status import Expectation, Seen, ShownExpectation, VerdictStatus
from .comparison import LEVEL_ORDER, LEVELS, PROPERTY_KINDS, Comparison, compare, lowest_level

__all__ = ["LEVEL_ORDER", "LEVELS", "EXPECTATIONS", "Comparison", "compare", "lowest_level"]

EXPECTATIONS: tuple[Expectation, ...] = ("bitwise", "tokens", "close", "vary", "report")


@dataclass(frozen=True)
class Verdict:
    """One profile's result for one property."""

    profile: str
    property: str
    expect: ShownExpectation  # "-": no expectation (no baseline, baseline updated or not comparable)
    status: VerdictStatus
    reason: str
    sequences: int
    bitwise: int
    token_identical: int  # bitwise included, close not
    close: int = 0  # near-ties at the first divergence: neither token-identical nor diverged
    unique_outputs: dict[str, int] = field(default_factory=dict)  # distinct token sequences per prompt
    unique_bits: dict[str, int] = field(default_factory=dict)  # distinct fingerprint sequences per prompt
    worst: Comparison | None = None
    level: Seen = "logits"  # what the comparison could see: logits bits, a server's logprobs, or text
    failed: int = 0  # sequences with no output (a request that failed), left out of the comparison
    comparisons: tuple[Comparison, ...] = ()  # every compared sequence, for the report to list
    tp: int = (
        1  # tensor parallel degree of the sequences judged (tp-invariance: the degree compared with the reference)
    )

    # builtins.property: in this class body `property` names the str field above
    @builtins.property
    def passed(self) -> bool:
        return self.status in ("pass", "report", "no baseline", "updated")

    @builtins.property
    def share_bitwise(self) -> float:
        return self.bitwise / self.sequences if self.sequences else 0.0

    @builtins.property
    def share_tokens(self) -> float:
        return self.token_identical / self.sequences if self.sequences else 0.0

    @builtins.property
    def share_close(self) -> float:
        """Share that meets "close": token-identical or a near-tie at the first divergence."""
        return (self.token_identical + self.close) / self.sequences if self.sequences else 0.0

    @builtins.property
    def max_unique(self) -> int:
        return max(self.unique_outputs.values(), default=0)


def references(records: list[Record], prop: str) -> tuple[dict[str, Record], list[Record]]:
    """(reference per prompt, records compared against it)."""
    if prop == "repeatability":
        refs: dict[str, Record] = {}
        others = []
        for r in records:
            if r.kind != "repeat":
                continue
            if r.prompt_id in refs:
                others.append(r)
            else:
                refs[r.prompt_id] = r
        return refs, others
    refs = {}
    for r in records:
        if r.kind == "solo":
            refs.setdefault(r.prompt_id, r)
    return refs, [r for r in records if r.kind in PROPERTY_KINDS[prop]]


def worst(comps: list[Comparison]) -> Comparison | None:
    """The one to show: the earliest diverged, else the earliest near-tie, else the earliest change of bits."""
    for level in ("diverged", "close"):
        hits = [c for c in comps if c.level == level]
        if hits:
            return min(hits, key=lambda c: (c.first_token_step, c.ref_margin if c.ref_margin is not None else 0.0))
    bits = [c for c in comps if c.level == "tokens" and c.unit != "character"]  # equal text: nothing to show
    return min(bits, key=lambda c: c.first_bit_step or 0) if bits else None


SEEN_AS = {"logits": "logits bits", "logprobs": "logprobs", "text": "text"}


def _tally(comps: list[Comparison], level: Seen) -> str:
    """Counts per level, e.g. '12/16 token-identical, 4 close (near-ties: margins 0.000-0.250), 0 diverged'."""
    n = Counter(c.level for c in comps)
    parts = [f"{n['bitwise'] + n['tokens']}/{len(comps)} {'text' if level == 'text' else 'token'}-identical"]
    if level != "text":  # text has no top-k, so nothing there can be close
        margins = sorted(c.ref_margin for c in comps if c.level == "close" and c.ref_margin is not None)
        ties = f" (near-ties: margins {margins[0]:.3f}-{margins[-1]:.3f})" if margins else ""
        parts.append(f"{n['close']} close{ties}")
    parts.append(f"{n['diverged']} diverged")
    return ", ".join(parts)


def judge(expect: Expectation, comps: list[Comparison], level: Seen = "logits") -> tuple[VerdictStatus, str]:
    n = len(comps)
    if n == 0:
        return "no data", "no sequences to compare (did the worker crash before this schedule?)"
    if level == "text" and expect in ("bitwise", "vary", "close"):
        needs = (
            "logprobs (each side's top-k at the first divergent step)" if expect == "close" else "logits or logprobs"
        )
        return "not comparable", (
            f"expectation {expect!r} needs {needs}, but the server returned text only; "
            "expect 'tokens' or 'report' for this endpoint"
        )
    count = Counter(c.level for c in comps)
    nbit = count["bitwise"]
    same = "identical to the reference" if level == "logits" else f"identical to the reference in {SEEN_AS[level]}"
    if expect == "bitwise":
        ok = nbit == n
        return ("pass" if ok else "fail"), f"{nbit}/{n} sequences bitwise {same}"
    if expect in ("tokens", "close"):
        ok = count["diverged"] == 0 and (expect == "close" or count["close"] == 0)
        return ("pass" if ok else "fail"), _tally(comps, level)
    if expect == "vary":
        if nbit < n:
            return (
                "pass",
                f"negative control saw variation: {n - nbit}/{n} sequences differ from the reference in {SEEN_AS[level]}",
            )
        return "fail", (
            f"negative control saw no variation in {n} sequences: the harness is blind here "
            "(are the flags leaking into this profile, or is the batch schedule too small?)"
        )
    if level == "text":
        return "report", f"{_tally(comps, level)} (no assertion)"
    return "report", f"{nbit}/{n} bitwise, {_tally(comps, level)} (no assertion)"


def verdict(
    profile: str,
    prop: str,
    expect: Expectation,
    comps: list[Comparison],
    level: Seen,
    note: str = "",
    *,
    failed: int = 0,
    unique_outputs: dict[str, int] | None = None,
    unique_bits: dict[str, int] | None = None,
) -> Verdict:
    """Judge the comparisons and count them; note is appended to the reason, the rest goes to the Verdict as is."""
    status, reason = judge(expect, comps, level)
    if note:
        reason = f"{reason}; {note}"
    n = Counter(c.level for c in comps)
    return Verdict(
        profile=profile,
        property=prop,
        expect=expect,
        status=status,
        reason=reason,
        sequences=len(comps),
        bitwise=n["bitwise"],
        token_identical=n["bitwise"] + n["tokens"],
        close=n["close"],
        worst=worst(comps),
        level=level,
        comparisons=tuple(comps),
        failed=failed,
        unique_outputs={} if unique_outputs is None else unique_outputs,
        unique_bits={} if unique_bits is None else unique_bits,
    )


def evaluate(records: list[Record], profile: str, prop: str, expect: Expectation, k: int | None = None) -> Verdict:
    """k: top-k depth for "close" (None: every captured top logprob)."""
    failed = sum(r.failed for r in records if r.kind in PROPERTY_KINDS[prop] or r.kind == "solo")
    records = [r for r in records if not r.failed]
    level = lowest_level(records)
    refs, others = references(records, prop)
    comps = [compare(refs[r.prompt_id], r, k) for r in others if r.prompt_id in refs]
    tok_sets: dict[str, set[tuple[int | str, ...]]] = defaultdict(set)
    bit_sets: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for r in list(refs.values()) + others:
        if r.prompt_id in refs:
            tok_sets[r.prompt_id].add(tuple(r.token_keys))
            bit_sets[r.prompt_id].add(tuple(r.fingerprints))
    note = f"{failed} sequences failed and are left out (see the failed requests)" if failed else ""
    return verdict(
        profile,
        prop,
        expect,
        comps,
        level,
        note,
        failed=failed,
        unique_outputs={p: len(v) for p, v in sorted(tok_sets.items())},
        unique_bits={p: len(v) for p, v in sorted(bit_sets.items())} if level != "text" else {},
    )


def tp_invariance(
    reference: list[Record],
    other: list[Record],
    profile: str,
    expect: Expectation,
    *,
    tp: int,
    ref_tp: int = 1,
    k: int | None = None,
) -> Verdict:
    """The same batches at tensor parallel degree `tp` against degree `ref_tp`: each sequence with its twin (same
    batch, same row), so only the degree differs between the two sides, not the batch around the prompt."""
    failed = sum(r.failed for r in reference + other)
    twins = {(r.batch_id, r.position): r for r in reference if not r.failed}
    pairs = [(twins[(r.batch_id, r.position)], r) for r in other if not r.failed and (r.batch_id, r.position) in twins]
    unmatched = sum(1 for r in other if not r.failed and (r.batch_id, r.position) not in twins)
    comps = [compare(a, b, k) for a, b in pairs]
    toks: dict[str, set[tuple[int | str, ...]]] = defaultdict(set)
    bits: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for a, b in pairs:
        for r in (a, b):
            toks[r.prompt_id].add(tuple(r.token_keys))
            bits[r.prompt_id].add(tuple(r.fingerprints))
    notes = [f"TP {tp} against TP {ref_tp}, batch for batch"]
    if unmatched:
        notes.append(f"{unmatched} sequences had no TP {ref_tp} twin (did the reference group stop early?)")
    if failed:
        notes.append(f"{failed} sequences failed and are left out")
    v = verdict(
        profile,
        "tp-invariance",
        expect,
        comps,
        lowest_level([a for a, _ in pairs] + [b for _, b in pairs]),
        "; ".join(notes),
        failed=failed,
        unique_outputs={p: len(x) for p, x in sorted(toks.items())},
        unique_bits={p: len(x) for p, x in sorted(bits.items())},
    )
    return replace(v, tp=tp)
