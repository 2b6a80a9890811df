"""One sequence against its reference, step by step: the comparison levels (bitwise, tokens, close, diverged) and
where and how the two left each other. Pure functions, no I/O, no torch."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import sub
from typing import NamedTuple, TypedDict

from ..records import CHARS, NO_IDS, TEXT_HASH, Record, text_hash
from ..status import Level, Seen

LEVEL_ORDER: tuple[Level, ...] = ("bitwise", "tokens", "close", "diverged")  # best first
LEVELS: tuple[Seen, ...] = ("logits", "logprobs", "text")  # best first

BATCH_KINDS = ("permutation", "batch-sizes", "needle")
PROPERTY_KINDS = {"repeatability": ("repeat",), "batch-invariance": BATCH_KINDS}


class _Where(TypedDict):
    """The fields every Comparison has, whatever its level."""

    prompt_id: str
    schedule: str
    batch_id: str
    batch: tuple[str, ...]
    position: int
    first_bit_step: int | None
    first_token_step: int | None
    max_dlogprob: float
    unit: str


class ComparisonRow(TypedDict):
    """Comparison.row(): one line of the report's list of compared sequences."""

    prompt_id: str
    schedule: str
    batch_id: str
    batch_size: int
    position: int
    level: Level
    first_bit_step: int | None
    first_token_step: int | None
    ref_margin: float | None
    ref_in_other_topk: bool | None
    other_in_ref_topk: bool | None
    ref_token: str
    other_token: str


@dataclass(frozen=True)
class Comparison:
    """One sequence against its reference."""

    prompt_id: str
    schedule: str
    batch_id: str
    batch: tuple[str, ...]
    position: int
    level: Level
    first_bit_step: int | None  # first step whose logits fingerprint differs
    first_token_step: int | None  # first step whose token differs
    ref_margin: float | None = None  # reference top-1 minus top-2 logprob at the divergent step
    ref_token: str = ""
    other_token: str = ""
    ref_in_other_topk: bool | None = None
    other_in_ref_topk: bool | None = None
    context: str = ""  # text generated before the divergent step
    max_dlogprob: float = 0.0  # largest |Δ logprob| over shared top-k ids, up to the divergence
    unit: str = "step"  # "character" when the server returned text only
    k: int = 0  # top-k depth the membership checks at the divergent step used

    def describe(self) -> str:
        where = f"prompt {self.prompt_id!r} in {self.batch_id} (batch of {len(self.batch)}, position {self.position})"
        if self.level == "bitwise":
            return f"{where}: bitwise identical"
        if self.level == "tokens":
            if self.unit == "character":
                return f"{where}: same text (the server gives text only, so bits cannot be compared)"
            return (
                f"{where}: same tokens, logits bits first differ at step {self.first_bit_step}; "
                f"max |Δ logprob| {self.max_dlogprob:.3g}"
            )
        margin = "n/a" if self.ref_margin is None else f"{self.ref_margin:.4f}"
        what = "text diverges at character" if self.unit == "character" else "tokens diverge at step"
        head = (
            f"{where}: {what} {self.first_token_step} after {self.context[-60:]!r}: "
            f"reference {self.ref_token!r} vs {self.other_token!r}; "
        )
        if self.level == "close":
            return (
                f"{head}near-tie: each side's token is in the other's top-{self.k}; reference margin {margin}; "
                f"max |Δ logprob| up to it {self.max_dlogprob:.3g}"
            )
        return (
            f"{head}reference margin {margin}; "
            f"reference token in other's top-{self.k or 'k'}: {_yn(self.ref_in_other_topk)}, "
            f"other's token in reference top-{self.k or 'k'}: {_yn(self.other_in_ref_topk)}; "
            f"max |Δ logprob| before it {self.max_dlogprob:.3g}"
        )

    def row(self) -> ComparisonRow:
        """Plain JSON-able values: one line of the report's list of compared sequences."""
        return ComparisonRow(
            prompt_id=self.prompt_id,
            schedule=self.schedule,
            batch_id=self.batch_id,
            batch_size=len(self.batch),
            position=self.position,
            level=self.level,
            first_bit_step=self.first_bit_step,
            first_token_step=self.first_token_step,
            ref_margin=self.ref_margin,
            ref_in_other_topk=self.ref_in_other_topk,
            other_in_ref_topk=self.other_in_ref_topk,
            ref_token=self.ref_token,
            other_token=self.other_token,
        )


def _yn(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def _first(a: Sequence[object], b: Sequence[object]) -> int | None:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return None if len(a) == len(b) else n


def _max_dlogprob(
    ri: Sequence[Sequence[object]],
    rl: Sequence[Sequence[float]],
    oi: Sequence[Sequence[object]],
    ol: Sequence[Sequence[float]],
    lo: int,
    hi: int,
) -> float:
    """Largest |Δ logprob| over the top-k entries both sides share (ids or text, as _views reads them), at steps
    [lo, hi)."""
    if hi <= lo:
        return 0.0
    ri, oi = ri[lo:hi], oi[lo:hi]
    rl, ol = rl[lo:hi], ol[lo:hi]
    if ri == oi:  # the common case, same ids in the same order at every step: one pass at C speed
        return max(map(abs, map(sub, chain.from_iterable(rl), chain.from_iterable(ol))), default=0.0)
    d = 0.0
    for r_ids, o_ids, r_lps, o_lps in zip(ri, oi, rl, ol):
        theirs = dict(zip(o_ids, o_lps))
        d = max(d, max((abs(lp - theirs[i]) for i, lp in zip(r_ids, r_lps) if i in theirs), default=0.0))
    return d


class _View(NamedTuple):
    """One side of a comparison in the space both sides can be read in: per step, what identifies the generated
    token and each top-k entry (an id, a text, a code point or a legacy hash), and the token's text to show."""

    tokens: Sequence[Hashable]
    topk: Sequence[Sequence[Hashable]]
    pieces: Sequence[str]


def _views(ref: Record, other: Record, text_only: bool) -> tuple[_View, _View]:
    """Both records in one space: text as characters where either side is text only; the model's ids where both
    have them; else the token text (a server gives text only; vLLM in process gives both), hashed as an older
    record stored it where one side is such a record."""
    if text_only:
        space = CHARS
    elif ref.ids == other.ids:
        space = ref.ids
    else:
        space = TEXT_HASH if TEXT_HASH in (ref.ids, other.ids) else NO_IDS
    return _view(ref, space), _view(other, space)


def _view(r: Record, space: str) -> _View:
    if space == CHARS:
        if r.level == "text":  # its tokens are its characters already
            return _View(r.tokens, [], r.pieces)
        chars = list(r.text)
        return _View([ord(c) for c in chars], [], chars)
    if space == r.ids:
        return _View(r.token_keys, r.topk_tokens if r.ids == NO_IDS else r.topk_ids, r.pieces)
    if space == NO_IDS:
        return _View(r.pieces, r.topk_tokens, r.pieces)
    # TEXT_HASH: the other side is a record from before `ids`, which stored the text's hash in place of ids.
    return _View([text_hash(p) for p in r.pieces], [[text_hash(t) for t in top] for top in r.topk_tokens], r.pieces)


def lowest_level(records: Iterable[Record]) -> Seen:
    return LEVELS[max((LEVELS.index(r.level) for r in records), default=0)]


def compare(ref: Record, other: Record, k: int | None = None) -> Comparison:
    """k: how deep into each side's top-k a near-tie may reach (None: every captured top logprob)."""
    text_only = "text" in (ref.level, other.level)
    rv, ov = _views(ref, other, text_only)
    tok_step = _first(rv.tokens, ov.tokens)
    # Text only: no fingerprints, so equal text is "tokens" (same output), never "bitwise".
    bit_step = (0 if tok_step is None else tok_step) if text_only else _first(ref.fingerprints, other.fingerprints)
    if tok_step is not None and (bit_step is None or bit_step > tok_step):
        bit_step = tok_step  # different tokens imply different logits from there on
    shared_steps = min(len(rv.topk), len(ov.topk))
    last = shared_steps if tok_step is None else min(tok_step + 1, shared_steps)
    # Steps before the first differing fingerprint have bit-identical logits: their Δ is 0, skip them.
    first = last if bit_step is None else min(bit_step, last)
    tops = (rv.topk, ref.topk_logprobs, ov.topk, other.topk_logprobs)
    dmax = max(_max_dlogprob(*tops, first, last - 1), _max_dlogprob(*tops, last - 1, last))
    base = _Where(
        prompt_id=other.prompt_id,
        schedule=other.schedule,
        batch_id=other.batch_id,
        batch=tuple(other.batch),
        position=other.position,
        first_bit_step=bit_step,
        first_token_step=tok_step,
        max_dlogprob=dmax,
        unit="character" if text_only else "step",
    )
    if tok_step is None:
        return Comparison(level="bitwise" if bit_step is None else "tokens", **base)
    s = tok_step
    r_tok = rv.tokens[s] if s < len(rv.tokens) else None
    o_tok = ov.tokens[s] if s < len(ov.tokens) else None
    r_ids = rv.topk[s][:k] if s < len(rv.topk) else []
    o_ids = ov.topk[s][:k] if s < len(ov.topk) else []
    margin = ref_in = other_in = None
    # Text only: s counts characters, not steps, and no side has a margin there.
    if not text_only and s < len(ref.topk_logprobs) and len(ref.topk_logprobs[s]) > 1:
        margin = ref.topk_logprobs[s][0] - ref.topk_logprobs[s][1]
    if r_tok is not None and s < len(ov.topk):
        ref_in = r_tok in o_ids
    if o_tok is not None and s < len(rv.topk):
        other_in = o_tok in r_ids
    # vLLM's check_logprobs_close: a near-tie at the first divergence is tolerated, what follows it is not compared.
    # A side that ended has no token there (None), and text carries no top-k: both stay diverged.
    close = not text_only and ref_in is True and other_in is True
    return Comparison(
        level="close" if close else "diverged",
        ref_margin=margin,
        ref_token=rv.pieces[s] if r_tok is not None else "<end>",
        other_token=ov.pieces[s] if o_tok is not None else "<end>",
        ref_in_other_topk=ref_in,
        other_in_ref_topk=other_in,
        context="".join(rv.pieces[max(0, s - 12) : s]),
        k=max(len(r_ids), len(o_ids)),
        **base,
    )
