"""Comparing one row's tensors between two replays of a batch: pure functions of tensors (no model, no I/O).

A tensor captured inside a forward pass belongs to a batch of `rows` rows, `q_len` new positions (the prompt at the
prefill, one token at a decode step) and `kv_len` positions in all (left padding first). `take_row` keeps this
side's row of it (the batch dimension first, or batch and positions flattened together, as a matmul sees a linear
layer's input); `align` then drops the padding from both sides' positions, so the reference's row and the compared
row line up position by position. A tensor with no batch dimension (a weight, a table) is compared whole.

The metrics are msit's (`msit llm compare`): maximum absolute and relative difference and cosine similarity per
tensor, and at the logits KL divergence and the top-2 margin; plus how many units in the last place (ulps) apart the
two sides are, so "the last bits" has a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

Taken = Literal["row", "flat", "shared"]
_INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}
REL_THRESHOLD = 1e-3  # "first exceeds 1e-3 relative"


@dataclass(frozen=True)
class Ctx:
    """Where this side's row sits in the forward pass that produced a tensor."""

    rows: int  # rows in the batch
    row: int  # the compared row
    q_len: int  # positions computed in this forward pass (the padded prompt at the prefill, 1 at a decode step)
    kv_len: int  # positions attended to (the padded prompt plus the tokens so far)
    pad: int  # the row's left padding

    @property
    def q_pad(self) -> int:
        """Padding among the new positions: all of it at the prefill, none at a decode step."""
        return self.pad if self.q_len == self.kv_len else 0


@dataclass
class Captured:
    """One side's view of one tensor: its row (with the padding still in), or the whole tensor when it has no batch
    dimension."""

    tensor: torch.Tensor
    taken: Taken
    shape: tuple[int, ...]  # the tensor's own shape, before the row was taken


def take_row(t: torch.Tensor, ctx: Ctx) -> Captured:
    """This side's row of `t`: dimension 0 is the batch (`rows` long), or batch and positions flattened (`rows *
    q_len`, a linear layer's matmul); anything else has no batch dimension and is kept whole."""
    shape = tuple(t.shape)
    if t.dim() == 0:
        return Captured(t, "shared", shape)
    if shape[0] == ctx.rows:
        return Captured(t[ctx.row], "row", shape)
    if ctx.q_len > 1 and shape[0] == ctx.rows * ctx.q_len:
        return Captured(t.reshape(ctx.rows, ctx.q_len, *shape[1:])[ctx.row], "flat", shape)
    return Captured(t, "shared", shape)


def align(a: Captured, ca: Ctx, b: Captured, cb: Ctx) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two sides' row, position for position with the padding dropped; None when they cannot be lined up."""
    x, y = a.tensor, b.tensor
    if a.taken == "shared" or b.taken == "shared":
        if a.taken == b.taken:
            return (x, y) if x.shape == y.shape else None
        # one side took a row where the other saw no batch: a size-1 dimension of a solo batch that is not a batch
        whole = [
            c.tensor.unsqueeze(0) if c.taken == "row" and ctx.rows == 1 else c.tensor for c, ctx in ((a, ca), (b, cb))
        ]
        return (whole[0], whole[1]) if whole[0].shape == whole[1].shape else None
    if x.dim() != y.dim():
        return None
    for d in range(x.dim()):
        na, nb = x.shape[d], y.shape[d]
        # a position dimension on both sides: the new positions, or every position attended to
        for la, lb, pa, pb in ((ca.q_len, cb.q_len, ca.q_pad, cb.q_pad), (ca.kv_len, cb.kv_len, ca.pad, cb.pad)):
            if na == la and nb == lb and la - pa == lb - pb and (pa or pb):
                x, y = x.narrow(d, pa, la - pa), y.narrow(d, pb, lb - pb)
                break
    return (x, y) if x.shape == y.shape else None


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (a NaN equals the same NaN; -0.0 differs from 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype in _INT_VIEW:
        return torch.equal(a.contiguous().view(_INT_VIEW[a.dtype]), b.contiguous().view(_INT_VIEW[b.dtype]))
    return torch.equal(a, b)


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """Float bits as integers ordered like the floats, so neighbours differ by one (ulp distance)."""
    bits = t.contiguous().view(_INT_VIEW[t.dtype]).to(torch.int64)
    width = t.element_size() * 8
    magnitude = bits & ((1 << (width - 1)) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance, in units in the last place of their dtype, between matching elements."""
    if a.dtype not in _INT_VIEW or a.numel() == 0:
        return 0 if torch.equal(a, b) else -1
    return int((_ordered(a) - _ordered(b)).abs().max())


def ulp_at(x: float, dtype: torch.dtype) -> float:
    """One unit in the last place of `dtype` at magnitude `x` (the spacing of that dtype's numbers there)."""
    if not dtype.is_floating_point:
        return 1.0
    info = torch.finfo(dtype)
    if x < info.tiny:
        return info.tiny * info.eps  # subnormal spacing
    return info.eps * 2.0 ** math.floor(math.log2(x))


def metrics(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """msit's per-tensor figures for reference `a` and compared `b`: bitwise equality, max absolute difference, max
    relative difference (max |a - b| over max |a|: relative to the tensor's scale, so a zero element cannot blow
    it up; `max_rel_element` is msit's element-wise max |a - b| / |a|, infinite where a is 0 and b is not) and cosine
    similarity; and the difference in ulps of the dtype: `ulps` at the tensor's scale (max |a - b|
    over one ulp at max |a|: above 1, more than the rounding of its largest entries) and `element_ulps` (the largest
    distance between matching elements, which a value near zero makes large)."""
    equal = bits_equal(a, b)
    if a.numel() == 0:
        return {
            "equal": equal,
            "max_abs": 0.0,
            "max_rel": 0.0,
            "max_rel_element": 0.0,
            "cosine": 1.0,
            "ulps": 0.0,
            "element_ulps": 0,
        }
    x, y = a.detach().to(torch.float64).flatten(), b.detach().to(torch.float64).flatten()
    diff = (x - y).abs()
    max_abs = float(diff.max())
    scale = float(x.abs().max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    ax = x.abs()
    per_element = torch.where(ax > 0, diff / ax.clamp(min=1e-300), torch.where(diff > 0, math.inf, 0.0))
    nx, ny = float(x.norm()), float(y.norm())
    cosine = float(x @ y) / (nx * ny) if nx > 0 and ny > 0 else (1.0 if nx == ny else 0.0)
    return {
        "equal": equal,
        "max_abs": max_abs,
        "max_rel": max_rel,
        "max_rel_element": float(per_element.max()),
        "cosine": min(max(cosine, -1.0), 1.0),
        "ulps": max_abs / ulp_at(scale, a.dtype),
        "element_ulps": 0 if equal else ulps(a, b),
    }


def logits_metrics(ref: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """One row's logits on both sides: msit's KL divergence KL(ref || other) and each side's top-2 margin (top-1
    minus top-2 log-probability), each side's argmax, and whether it flips; with the per-tensor figures."""
    lp = torch.log_softmax(ref.detach().to(torch.float64).flatten(), -1)
    lq = torch.log_softmax(other.detach().to(torch.float64).flatten(), -1)
    kl = float((lp.exp() * (lp - lq)).sum())
    top_p, top_q = lp.topk(min(2, lp.numel())), lq.topk(min(2, lq.numel()))

    def margin(top: Any) -> float:
        v = top.values.tolist()
        return float(v[0] - v[1]) if len(v) > 1 else math.inf

    return {
        **metrics(ref, other),
        "kl": max(kl, 0.0),
        "ref_margin": margin(top_p),
        "other_margin": margin(top_q),
        "ref_argmax": int(top_p.indices[0]),
        "other_argmax": int(top_q.indices[0]),
        "argmax_flips": int(top_p.indices[0]) != int(top_q.indices[0]),
    }


def compare_pairs(
    ref: list[tuple[str, Captured]], ca: Ctx, other: list[tuple[str, Captured]], cb: Ctx
) -> list[dict[str, Any]]:
    """Named tensors captured in order on both sides (modules or operators), one entry each: the name, both shapes
    and the metrics, or why they cannot be compared ("not aligned": the row could not be lined up). Where the two
    sides ran different code (the mask preparation a padded batch needs and a solo one does not), the names are
    matched up again (difflib) and what each side ran alone is one "different code" entry (`ref_ran`,
    `other_ran`); `index` and `other_index` are each side's position."""
    names_a, names_b = [n for n, _ in ref], [n for n, _ in other]
    if names_a == names_b:
        blocks = [(0, 0, len(names_a))]
    else:
        import difflib

        matcher = difflib.SequenceMatcher(None, names_a, names_b, autojunk=False)
        blocks = [(b.a, b.b, b.size) for b in matcher.get_matching_blocks()]
    out: list[dict[str, Any]] = []
    ia = ib = 0
    for ja, jb, size in blocks:
        if ja > ia or jb > ib:  # what only one side ran, up to this block
            out.append(
                {
                    "index": ia,
                    "other_index": ib,
                    "name": names_a[ia] if ja > ia else "nothing",
                    "other_name": names_b[ib] if jb > ib else "nothing",
                    "equal": False,
                    "comparable": False,
                    "why": "different code",
                    "ref_ran": names_a[ia:ja],
                    "other_ran": names_b[ib:jb],
                }
            )
        for k in range(size):
            (na, a), (_, b) = ref[ja + k], other[jb + k]
            entry: dict[str, Any] = {
                "index": ja + k,
                "other_index": jb + k,
                "name": na,
                "ref_shape": list(a.shape),
                "other_shape": list(b.shape),
            }
            pair = align(a, ca, b, cb)
            if pair is None:
                out.append({**entry, "equal": None, "comparable": False, "why": "not aligned"})
            else:
                out.append({**entry, "comparable": True, **metrics(*pair)})
        ia, ib = ja + size, jb + size
    return out


def first_difference(entries: list[dict[str, Any]], unaligned: bool = False) -> dict[str, Any] | None:
    """The first entry run on both sides whose bits differ (with `unaligned`, or whose row could not be lined up,
    so is not shown equal: an attention kernel that takes its inputs in another layout on the other side); else
    the first place where the two sides ran different code (when nothing run on both sides differs)."""
    bad = (False, None) if unaligned else (False,)
    differs = (e for e in entries if e.get("equal") in bad and e.get("why") != "different code")
    return next(differs, None) or next((e for e in entries if e.get("why") == "different code"), None)


def code_before(entries: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any] | None:
    """The first place the two sides ran different code before `entry`: what led to it, if anything."""
    return next(
        (e for e in entries if e.get("why") == "different code" and e is not entry and e["index"] <= entry["index"]),
        None,
    )


def first_over(entries: list[dict[str, Any]], *, ulp: float = 1.0, rel: float = REL_THRESHOLD) -> dict[str, str | None]:
    """Where the difference first exceeds one ulp of the dtype at the tensor's scale, and where it first exceeds
    `rel` relative."""
    over_ulp = next((e["name"] for e in entries if e.get("comparable") and e.get("ulps", 0.0) > ulp), None)
    over_rel = next((e["name"] for e in entries if e.get("comparable") and e.get("max_rel", 0.0) > rel), None)
    return {"first_over_ulp": over_ulp, "first_over_rel": over_rel}


def first_tensor(out: Any) -> torch.Tensor | None:
    """A module's output as one tensor: itself, the first tensor of a tuple or list, or of a model output (its
    logits or last hidden state first)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # transformers' ModelOutput is an ordered dict of what is set
        for key in ("logits", "last_hidden_state"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]  # type: ignore[no-any-return]
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if (t := first_tensor(item)) is not None:
                return t
    return None


def tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in an operator's output (a tensor, or a tuple or list of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    return []
