"""The `close` level (vLLM's check_logprobs_close): at the first divergent step each side's token is in the other's
top-k; what follows is not compared."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.analysis import baseline
from harness.analysis.determinism import LEVEL_ORDER, compare, evaluate, judge, worst

from .helpers import record as rec

# The reference 1 2 3 4; at step 2 it captured five candidates: 3, then 30, 31, 32 (rank 4) and 33.
REF_TOPK = [
    ([1, 900, 950], [-0.1, -0.6, -2.0]),
    ([2, 901, 950], [-0.1, -0.6, -2.0]),
    ([3, 30, 31, 32, 33], [-0.50, -0.55, -1.0, -1.5, -2.0]),
    ([4, 903, 950], [-0.1, -0.6, -2.0]),
]


def ref():
    return rec(tokens=(1, 2, 3, 4), topk=REF_TOPK)


def other(tok: int, alts: tuple[int, ...], prompt="p", bid=None):
    """Same as the reference up to step 2, then `tok` with `alts` behind it in its top-k, then unrelated tokens."""
    topk = REF_TOPK[:2] + [
        ([tok, *alts], [-0.5, -0.52, -1.0, -1.5, -2.0][: 1 + len(alts)]),
        ([77, 78, 79], [-0.1, -1, -2]),
    ]
    return rec(prompt, kind="needle", tokens=(1, 2, tok, 77), topk=topk, batch_id=bid)


def text(r):
    return dataclasses.replace(r, level="text", fingerprints=[], topk_ids=[], topk_logprobs=[])


def test_levels_in_order():
    assert LEVEL_ORDER == ("bitwise", "tokens", "close", "diverged")
    assert compare(ref(), ref()).level == "bitwise"
    assert compare(ref(), dataclasses.replace(ref(), fingerprints=["a", "b", "c", "d"])).level == "tokens"


def test_inside_each_others_topk_is_close_outside_is_diverged():
    c = compare(ref(), other(30, (3, 40)))
    assert c.level == "close" and c.first_token_step == 2 and c.ref_in_other_topk and c.other_in_ref_topk
    assert c.k == 5 and abs(c.ref_margin - 0.05) < 1e-9
    text_ = c.describe()
    for part in ("step 2", "'<3>' vs '<30>'", "near-tie", "top-5", "margin 0.0500"):
        assert part in text_
    far = compare(ref(), other(60, (61, 62)))
    assert far.level == "diverged" and far.ref_in_other_topk is False and far.other_in_ref_topk is False


@pytest.mark.parametrize(
    "tok, alts",
    [
        (30, (40, 41)),  # other's token in the reference top-k, not the reverse
        (60, (3, 41)),
    ],
)  # the reference token in the other's top-k, not the reverse
def test_one_sided_membership_is_diverged(tok, alts):
    c = compare(ref(), other(tok, alts))
    assert c.level == "diverged" and c.ref_in_other_topk != c.other_in_ref_topk


def test_k_smaller_than_captured_topk_excludes_a_rank_4_alternative():
    near = other(32, (3, 40))  # 32 is the reference's 4th candidate
    assert compare(ref(), near).level == "close" and compare(ref(), near, k=4).level == "close"
    c = compare(ref(), near, k=3)
    assert c.level == "diverged" and c.other_in_ref_topk is False and c.ref_in_other_topk is True and c.k == 3


def test_a_side_that_ended_is_diverged():
    short = rec(kind="needle", tokens=(1, 2), topk=REF_TOPK[:2])
    c = compare(ref(), short)
    assert c.level == "diverged" and c.other_token == "<end>"
    assert compare(short, rec(kind="needle", tokens=(1, 2, 3), topk=REF_TOPK[:3])).level == "diverged"


def test_text_level_has_no_close():
    assert compare(text(ref()), text(other(30, (3, 40)))).level == "diverged"


def test_judge_close_and_tokens():
    bit, tok = compare(ref(), ref()), compare(ref(), dataclasses.replace(ref(), fingerprints=["a", "b", "c", "d"]))
    near, far = compare(ref(), other(30, (3, 40))), compare(ref(), other(60, (61, 62)))
    near2 = compare(ref(), other(31, (3,)))
    status, reason = judge("close", [bit, tok, near, near2])
    assert status == "pass"
    assert reason == "2/4 token-identical, 2 close (near-ties: margins 0.050-0.050), 0 diverged"
    status, reason = judge("close", [bit, near, far])
    assert status == "fail" and reason == "1/3 token-identical, 1 close (near-ties: margins 0.050-0.050), 1 diverged"
    assert judge("close", [far, far])[1] == "0/2 token-identical, 0 close, 2 diverged"
    assert judge("tokens", [bit, tok])[0] == "pass"
    status, reason = judge("tokens", [bit, tok, near])
    assert status == "fail" and "1 close" in reason
    assert judge("bitwise", [bit, near])[0] == "fail"
    assert judge("vary", [bit, near])[0] == "pass"
    status, reason = judge("report", [bit, near, far])
    assert (
        status == "report" and reason.startswith("1/3 bitwise, 1/3 token-identical, 1 close") and "1 diverged" in reason
    )


def test_close_at_text_level_is_not_comparable():
    c = compare(text(ref()), text(ref()))
    status, reason = judge("close", [c], "text")
    assert status == "not comparable" and "close" in reason and "needs logprobs" in reason and "text only" in reason
    assert judge("tokens", [c], "text") == ("pass", "1/1 text-identical, 0 diverged")
    v = evaluate(
        [text(ref()), text(dataclasses.replace(ref(), kind="needle", schedule="needle"))],
        "x",
        "batch-invariance",
        "close",
    )
    assert v.status == "not comparable" and v.level == "text" and not v.passed


def test_worst_prefers_diverged_over_earlier_close():
    near = compare(ref(), other(30, (3, 40)))
    late = compare(rec(tokens=(1, 2, 3, 4)), rec(kind="needle", tokens=(1, 2, 3, 99)))
    assert near.level == "close" and late.level == "diverged" and late.first_token_step > near.first_token_step
    assert worst([near, late, near]) is late
    tok = compare(ref(), dataclasses.replace(ref(), fingerprints=["fp1", "b", "c", "d"]))
    assert worst([tok, near]) is near and worst([tok]) is tok


def test_verdict_counts_and_holds_every_comparison():
    records = [
        ref(),
        rec("q"),
        other(30, (3, 40), bid="needle/0"),
        other(60, (61, 62), bid="needle/1"),
        dataclasses.replace(ref(), kind="batch-sizes", schedule="batch-sizes", batch_id="bs/0"),
        rec("q", kind="batch-sizes", fingerprints=["a", "b", "c", "d"]),
    ]
    v = evaluate(records, "x", "batch-invariance", "close", k=5)
    assert v.sequences == 4 and len(v.comparisons) == 4
    assert [c.level for c in v.comparisons] == ["close", "diverged", "bitwise", "tokens"]
    assert v.bitwise == 1 and v.token_identical == 2 and v.close == 1 and v.share_close == 0.75
    assert v.status == "fail" and v.worst.batch_id == "needle/1"
    rows = [c.row() for c in v.comparisons]
    assert json.loads(json.dumps(rows)) == rows
    assert rows[0] == dict(
        prompt_id="p",
        schedule="needle",
        batch_id="needle/0",
        batch_size=1,
        position=0,
        level="close",
        first_bit_step=2,
        first_token_step=2,
        ref_margin=rows[0]["ref_margin"],
        ref_in_other_topk=True,
        other_in_ref_topk=True,
        ref_token="<3>",
        other_token="<30>",
    )
    assert evaluate(records[:3], "x", "batch-invariance", "close").status == "pass"
    assert evaluate(records[:3], "x", "batch-invariance", "close", k=1).status == "fail"


def _baseline_records(prompts: dict[str, tuple[int, ...]]):
    return [rec(p, tokens=toks, batch=(p,)) for p, toks in prompts.items()]


def test_baseline_close_fails_on_a_corrupted_reference_and_names_the_prompt():
    ours = _baseline_records({"a": (1, 2, 3, 4), "b": (5, 6, 7, 8), "c": (9, 10, 11, 12)})
    stored = {r.prompt_id: r for r in ours}
    # the baseline's continuation for "b" is unrelated text: other tokens from step 0, top-k disjoint from ours
    stored["b"] = rec(
        "b", tokens=(500, 501, 502, 503), topk=[([500 + i, 600 + i, 700 + i], [-0.1, -0.6, -2.0]) for i in range(4)]
    )
    # "c" is a near-tie at step 2 under the other hardware: tolerated by close
    stored["c"] = rec(
        "c",
        tokens=(9, 10, 902, 77),
        topk=[
            ([9, 900, 950], [-0.1, -0.6, -2.0]),
            ([10, 901, 950], [-0.1, -0.6, -2.0]),
            ([902, 11, 950], [-0.5, -0.52, -2.0]),
            ([77, 78, 79], [-0.1, -1, -2]),
        ],
    )
    v = baseline.evaluate(ours, stored.get, "x", "close", note="other hardware")
    assert v.status == "fail" and v.expect == "close" and v.property == "baseline"
    assert v.worst.prompt_id == "b" and v.worst.first_token_step == 0 and v.worst.level == "diverged"
    assert "'b'" in v.worst.describe()
    assert v.reason.startswith("1/3 token-identical, 1 close") and v.reason.endswith("; other hardware")
    assert [c.prompt_id for c in v.comparisons] == ["a", "b", "c"] and v.close == 1
    del stored["b"]
    assert baseline.evaluate(ours, stored.get, "x", "close").status == "pass"
    assert baseline.evaluate(ours, stored.get, "x", "tokens").status == "fail"  # the near-tie is not token-identical
    assert baseline.evaluate(ours, lambda p: ours[0] if p == "a" else None, "x", "bitwise").status == "pass"


def test_baseline_at_text_level_compares_text():
    ours = [text(r) for r in _baseline_records({"a": (1, 2, 3)})]
    for expect in ("bitwise", "tokens", "close"):
        v = baseline.evaluate(ours, lambda p: ours[0], "x", expect)
        assert v.status == "pass" and v.expect == "tokens" and v.level == "text"
    v = baseline.evaluate(ours, lambda p: ours[0], "x", "close", note="other hardware")
    assert "close needs logprobs" in v.reason and v.reason.endswith("other hardware")
    with pytest.raises(ValueError):
        baseline.evaluate(ours, lambda p: ours[0], "x", "vary")
