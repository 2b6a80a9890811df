"""Determinism analysis: records in, verdicts out. Pure functions, no I/O, no torch."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain
from operator import sub

from ..records import Record

BATCH_KINDS = ("permutation", "batch-sizes", "needle")
PROPERTY_KINDS = {"repeatability": ("repeat",), "batch-invariance": BATCH_KINDS}


@dataclass(frozen=True)
class Comparison:
    """One sequence against its reference."""
    prompt_id: str
    schedule: str
    batch_id: str
    batch: tuple[str, ...]
    position: int
    level: str                          # "bitwise" | "tokens" | "diverged"
    first_bit_step: int | None          # first step whose logits fingerprint differs
    first_token_step: int | None        # first step whose token differs
    ref_margin: float | None = None     # reference top-1 minus top-2 logprob at the divergent step
    ref_token: str = ""
    other_token: str = ""
    ref_in_other_topk: bool | None = None
    other_in_ref_topk: bool | None = None
    context: str = ""                   # text generated before the divergent step
    max_dlogprob: float = 0.0           # largest |Δ logprob| over shared top-k ids, up to the divergence
    unit: str = "step"                  # "character" when the server returned text only

    def describe(self) -> str:
        where = f"prompt {self.prompt_id!r} in {self.batch_id} (batch of {len(self.batch)}, position {self.position})"
        if self.level == "bitwise":
            return f"{where}: bitwise identical"
        if self.level == "tokens":
            if self.unit == "character":
                return f"{where}: same text (the server gives text only, so bits cannot be compared)"
            return (f"{where}: same tokens, logits bits first differ at step {self.first_bit_step}; "
                    f"max |Δ logprob| {self.max_dlogprob:.3g}")
        margin = "n/a" if self.ref_margin is None else f"{self.ref_margin:.4f}"
        what = "text diverges at character" if self.unit == "character" else "tokens diverge at step"
        return (f"{where}: {what} {self.first_token_step} after {self.context[-60:]!r}: "
                f"reference {self.ref_token!r} vs {self.other_token!r}; reference margin {margin}; "
                f"reference token in other's top-k: {_yn(self.ref_in_other_topk)}, "
                f"other's token in reference top-k: {_yn(self.other_in_ref_topk)}; "
                f"max |Δ logprob| before it {self.max_dlogprob:.3g}")


def _yn(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def _first(a: list, b: list) -> int | None:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return None if len(a) == len(b) else n


def _max_dlogprob(ref: Record, other: Record, lo: int, hi: int) -> float:
    """Largest |Δ logprob| over the top-k ids both sides share, at steps [lo, hi)."""
    if hi <= lo:
        return 0.0
    ri, oi = ref.topk_ids[lo:hi], other.topk_ids[lo:hi]
    rl, ol = ref.topk_logprobs[lo:hi], other.topk_logprobs[lo:hi]
    if ri == oi:  # the common case, same ids in the same order at every step: one pass at C speed
        return max(map(abs, map(sub, chain.from_iterable(rl), chain.from_iterable(ol))), default=0.0)
    d = 0.0
    for r_ids, o_ids, r_lps, o_lps in zip(ri, oi, rl, ol):
        theirs = dict(zip(o_ids, o_lps))
        d = max(d, max((abs(lp - theirs[i]) for i, lp in zip(r_ids, r_lps) if i in theirs), default=0.0))
    return d


LEVELS = ("logits", "logprobs", "text")   # what a comparison can see, best first


def lowest_level(records) -> str:
    return max((r.level for r in records), key=LEVELS.index, default="logits")


def compare(ref: Record, other: Record) -> Comparison:
    text_only = "text" in (ref.level, other.level)
    tok_step = _first(ref.tokens, other.tokens)
    # Text only: no fingerprints, so equal text is "tokens" (same output), never "bitwise".
    bit_step = (0 if tok_step is None else tok_step) if text_only else _first(ref.fingerprints, other.fingerprints)
    if tok_step is not None and (bit_step is None or bit_step > tok_step):
        bit_step = tok_step  # different tokens imply different logits from there on
    shared_steps = min(len(ref.topk_ids), len(other.topk_ids))
    last = shared_steps if tok_step is None else min(tok_step + 1, shared_steps)
    # Steps before the first differing fingerprint have bit-identical logits: their Δ is 0, skip them.
    first = last if bit_step is None else min(bit_step, last)
    dmax = max(_max_dlogprob(ref, other, first, last - 1), _max_dlogprob(ref, other, last - 1, last))
    base = dict(prompt_id=other.prompt_id, schedule=other.schedule, batch_id=other.batch_id, batch=tuple(other.batch),
                position=other.position, first_bit_step=bit_step, first_token_step=tok_step, max_dlogprob=dmax,
                unit="character" if text_only else "step")
    if tok_step is None:
        return Comparison(level="bitwise" if bit_step is None else "tokens", **base)
    s = tok_step
    r_tok = ref.tokens[s] if s < len(ref.tokens) else None
    o_tok = other.tokens[s] if s < len(other.tokens) else None
    margin = ref_in = other_in = None
    if s < len(ref.topk_logprobs) and len(ref.topk_logprobs[s]) > 1:
        margin = ref.topk_logprobs[s][0] - ref.topk_logprobs[s][1]
    if r_tok is not None and s < len(other.topk_ids):
        ref_in = r_tok in other.topk_ids[s]
    if o_tok is not None and s < len(ref.topk_ids):
        other_in = o_tok in ref.topk_ids[s]
    return Comparison(level="diverged", ref_margin=margin,
                      ref_token=ref.pieces[s] if r_tok is not None else "<end>",
                      other_token=other.pieces[s] if o_tok is not None else "<end>",
                      ref_in_other_topk=ref_in, other_in_ref_topk=other_in,
                      context="".join(ref.pieces[max(0, s - 12):s]), **base)


@dataclass(frozen=True)
class Verdict:
    """One profile's result for one property."""
    profile: str
    property: str
    expect: str
    status: str                          # "pass" | "fail" | "report" | "no data"
    reason: str
    sequences: int
    bitwise: int
    token_identical: int                 # bitwise included
    unique_outputs: dict[str, int] = field(default_factory=dict)   # distinct token sequences per prompt
    unique_bits: dict[str, int] = field(default_factory=dict)      # distinct fingerprint sequences per prompt
    worst: Comparison | None = None
    level: str = "logits"                # what the comparison could see: logits bits, a server's logprobs, or text
    failed: int = 0                      # sequences with no output (a request that failed), left out of the comparison

    @property
    def passed(self) -> bool:
        return self.status in ("pass", "report", "no baseline", "updated")

    @property
    def share_bitwise(self) -> float:
        return self.bitwise / self.sequences if self.sequences else 0.0

    @property
    def share_tokens(self) -> float:
        return self.token_identical / self.sequences if self.sequences else 0.0

    @property
    def max_unique(self) -> int:
        return max(self.unique_outputs.values(), default=0)


def _references(records: list[Record], prop: str) -> tuple[dict[str, Record], list[Record]]:
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
    div = [c for c in comps if c.level == "diverged"]
    if div:
        return min(div, key=lambda c: (c.first_token_step, c.ref_margin if c.ref_margin is not None else 0.0))
    bits = [c for c in comps if c.level == "tokens" and c.unit != "character"]  # equal text: nothing to show
    return min(bits, key=lambda c: c.first_bit_step) if bits else None


SEEN_AS = {"logits": "logits bits", "logprobs": "logprobs", "text": "text"}


def judge(expect: str, comps: list[Comparison], level: str = "logits") -> tuple[str, str]:
    n = len(comps)
    if n == 0:
        return "no data", "no sequences to compare (did the worker crash before this schedule?)"
    if level == "text" and expect in ("bitwise", "vary"):
        return "not comparable", (f"expectation {expect!r} needs logits or logprobs, but the server returned text only; "
                                  "expect 'tokens' or 'report' for this endpoint")
    nbit = sum(c.level == "bitwise" for c in comps)
    ndiv = sum(c.level == "diverged" for c in comps)
    same = "identical to the reference" if level == "logits" else f"identical to the reference in {SEEN_AS[level]}"
    if expect == "bitwise":
        ok = nbit == n
        return ("pass" if ok else "fail"), f"{nbit}/{n} sequences bitwise {same}"
    if expect == "tokens":
        ok = ndiv == 0
        unit = "text" if level == "text" else "token"
        return ("pass" if ok else "fail"), f"{n - ndiv}/{n} sequences {unit}-identical to the reference"
    if expect == "vary":
        if nbit < n:
            return "pass", f"negative control saw variation: {n - nbit}/{n} sequences differ from the reference in {SEEN_AS[level]}"
        return "fail", (f"negative control saw no variation in {n} sequences: the harness is blind here "
                        "(are the flags leaking into this profile, or is the batch schedule too small?)")
    if level == "text":
        return "report", f"{n - ndiv}/{n} text-identical (no assertion)"
    return "report", f"{nbit}/{n} bitwise, {n - ndiv}/{n} token-identical (no assertion)"


def evaluate(records: list[Record], profile: str, prop: str, expect: str) -> Verdict:
    failed = sum(r.failed for r in records if r.kind in PROPERTY_KINDS[prop] or r.kind == "solo")
    records = [r for r in records if not r.failed]
    level = lowest_level(records)
    refs, others = _references(records, prop)
    comps = [compare(refs[r.prompt_id], r) for r in others if r.prompt_id in refs]
    tok_sets: dict[str, set] = defaultdict(set)
    bit_sets: dict[str, set] = defaultdict(set)
    for r in list(refs.values()) + others:
        if r.prompt_id in refs:
            tok_sets[r.prompt_id].add(tuple(r.tokens))
            bit_sets[r.prompt_id].add(tuple(r.fingerprints))
    status, reason = judge(expect, comps, level)
    if failed:
        reason += f"; {failed} sequences failed and are left out (see the failed requests)"
    return Verdict(profile=profile, property=prop, expect=expect, status=status, reason=reason,
                   sequences=len(comps), bitwise=sum(c.level == "bitwise" for c in comps),
                   token_identical=sum(c.level != "diverged" for c in comps),
                   unique_outputs={k: len(v) for k, v in sorted(tok_sets.items())},
                   unique_bits={k: len(v) for k, v in sorted(bit_sets.items())} if level != "text" else {},
                   worst=worst(comps), level=level, failed=failed)
