from __future__ import annotations

import math

from harness.analysis.determinism import Verdict, compare, evaluate, judge

from .helpers import record as rec


def test_bitwise():
    c = compare(rec(), rec(kind="needle"))
    assert c.level == "bitwise" and c.first_bit_step is None and c.first_token_step is None and c.max_dlogprob == 0


def test_tokens_level_finds_first_bit_step_and_logprob_delta():
    other = rec(
        kind="needle",
        fingerprints=["fp1", "fp2", "zz", "qq"],
        topk=[
            ([1, 900, 950], [-0.1, -0.6, -2.0]),
            ([2, 901, 950], [-0.1, -0.6, -2.0]),
            ([3, 902, 7], [-0.1003, -0.6, -3.0]),
            ([4, 903, 950], [-0.1, -0.6, -2.0]),
        ],
    )
    c = compare(rec(), other)
    assert c.level == "tokens" and c.first_bit_step == 2 and c.first_token_step is None
    assert math.isclose(c.max_dlogprob, 0.0003, rel_tol=1e-6)  # id 950 is not shared at step 2: not counted


def test_known_first_divergence():
    topk = [
        ([5, 900, 950], [-0.1, -0.6, -2.0]),
        ([6, 901, 950], [-0.1, -0.6, -2.0]),
        ([42, 7, 950], [-0.5, -0.52, -2.0]),
        ([1, 2, 3], [-1.0, -2.0, -3.0]),
        ([1, 2, 3], [-1.0, -2.0, -3.0]),
    ]
    ref = rec(
        tokens=(5, 6, 7, 8, 9),
        topk=[
            ([5, 900, 950], [-0.1, -0.6, -2.0]),
            ([6, 901, 950], [-0.1, -0.6, -2.0]),
            ([7, 42, 950], [-0.51, -0.53, -2.0]),
            ([8, 2, 3], [-1.0, -2.0, -3.0]),
            ([9, 2, 3], [-1.0, -2.0, -3.0]),
        ],
    )
    other = rec(kind="batch-sizes", tokens=(5, 6, 42, 1, 1), topk=topk, batch=("q", "p", "r"), position=1)
    c = compare(ref, other)
    assert c.level == "close"  # 7 and 42 are each in the other side's top-3: a near-tie at the first divergence
    assert c.first_token_step == 2 and c.first_bit_step == 2
    assert math.isclose(c.ref_margin, 0.02, rel_tol=1e-9)
    assert c.ref_token == "<7>" and c.other_token == "<42>"
    assert c.ref_in_other_topk is True and c.other_in_ref_topk is True
    assert c.context == "<5><6>"
    assert math.isclose(c.max_dlogprob, 0.03, rel_tol=1e-6)  # id 42 at step 2: -0.53 vs -0.50
    text = c.describe()
    for part in ("step 2", "'<7>' vs '<42>'", "margin 0.0200", "batch of 3, position 1"):
        assert part in text


def test_divergence_by_length_and_not_in_topk():
    ref = rec(tokens=(1, 2, 3))
    short = rec(kind="needle", tokens=(1, 2))
    c = compare(ref, short)
    assert c.level == "diverged" and c.first_token_step == 2 and c.other_token == "<end>"
    far = rec(
        kind="needle",
        tokens=(1, 77, 3),
        topk=[([1, 5, 6], [-0.1, -1, -2]), ([77, 5, 6], [-0.1, -1, -2]), ([3, 5, 6], [-0.1, -1, -2])],
    )
    c = compare(ref, far)
    assert c.ref_in_other_topk is False and c.other_in_ref_topk is False


def test_judge_expectations():
    bit, tok = compare(rec(), rec(kind="needle")), compare(rec(), rec(kind="needle", fingerprints=["a", "b", "c", "d"]))
    div = compare(rec(), rec(kind="needle", tokens=(1, 2, 9, 9)))
    assert judge("bitwise", [bit, bit])[0] == "pass" and judge("bitwise", [bit, tok])[0] == "fail"
    assert judge("tokens", [bit, tok])[0] == "pass" and judge("tokens", [tok, div])[0] == "fail"
    assert judge("vary", [bit, tok])[0] == "pass"
    status, reason = judge("vary", [bit, bit])
    assert status == "fail" and "blind" in reason  # a negative control that sees nothing must not pass
    assert judge("report", [div])[0] == "report"
    assert judge("bitwise", [])[0] == "no data"


def test_evaluate_batch_invariance_and_unique_outputs():
    records = [
        rec("p"),
        rec("q", tokens=(7, 8)),
        rec("p", kind="batch-sizes", batch=("p", "q")),
        rec("q", kind="batch-sizes", tokens=(7, 9), batch=("p", "q"), position=1),
        rec("p", kind="needle", fingerprints=["a", "b", "c", "d"]),
        rec("q", kind="needle", tokens=(7, 9)),
        rec("p", kind="repeat"),
        rec("p", kind="repeat"),
    ]
    v = evaluate(records, "x", "batch-invariance", "tokens")
    assert isinstance(v, Verdict)
    assert v.sequences == 4 and v.bitwise == 1 and v.token_identical == 2
    assert v.status == "fail" and v.worst.prompt_id == "q" and v.worst.first_token_step == 1
    assert v.unique_outputs == {"p": 1, "q": 2} and v.unique_bits == {"p": 2, "q": 2}
    assert v.share_tokens == 0.5 and v.max_unique == 2


def test_evaluate_repeatability_uses_first_repeat_as_reference():
    records = [rec("p", kind="solo", tokens=(9, 9)), rec("p", kind="repeat"), rec("p", kind="repeat")]
    v = evaluate(records, "x", "repeatability", "bitwise")
    assert v.status == "pass" and v.sequences == 1


def test_evaluate_missing_reference_is_no_data():
    v = evaluate([rec("p", kind="needle")], "x", "batch-invariance", "tokens")
    assert v.status == "no data" and not v.passed
