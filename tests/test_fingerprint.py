from __future__ import annotations

import pytest
import torch

from harness.fingerprint import fingerprint, to_hex


@pytest.mark.parametrize(
    "dtype, int_view", [(torch.float32, torch.int32), (torch.bfloat16, torch.int16), (torch.float16, torch.int16)]
)
def test_one_flipped_low_bit_changes_the_fingerprint(dtype, int_view):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=g).to(dtype)
    base = fingerprint(logits)
    for row, col in [(0, 0), (2, 517), (3, 999)]:
        flipped = logits.clone()
        bits = flipped.view(int_view)
        bits[row, col] ^= 1  # the lowest mantissa bit
        assert flipped[row, col] != logits[row, col]
        fp = fingerprint(flipped)
        assert not torch.equal(fp[row], base[row])
        others = [r for r in range(4) if r != row]
        assert torch.equal(fp[others], base[others])


def test_swapping_two_values_changes_it():
    # A plain sum would miss a transposition; the index-weighted sum does not.
    logits = torch.randn(1, 100)
    swapped = logits.clone()
    swapped[0, [3, 70]] = swapped[0, [70, 3]]
    assert not torch.equal(fingerprint(logits), fingerprint(swapped))


def test_row_permutation_keeps_each_rows_fingerprint():
    logits = torch.randn(6, 4096)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(fingerprint(logits)[perm], fingerprint(logits[perm]))


def test_equal_bits_equal_fingerprint_and_hex_form():
    a = torch.randn(2, 333)
    assert torch.equal(fingerprint(a), fingerprint(a.clone()))
    pair = fingerprint(a)[0].tolist()
    h = to_hex(pair)
    # 16 hex digits per sum, each the int64 taken modulo 2**64: the stored form maps back to the two sums
    bits = a[0].view(torch.int32).to(torch.int64)
    plain, weighted = int(bits.sum()), int((bits * torch.arange(1, 334)).sum())
    assert h == f"{plain % 2**64:016x}{weighted % 2**64:016x}" and len(h) == 32
    b = a.clone()
    b[0, 7] = torch.nextafter(b[0, 7], torch.tensor(float("inf")))  # one ulp in one logit
    assert to_hex(fingerprint(b)[0].tolist()) != h
    assert to_hex([-1, 0]) == "f" * 16 + "0" * 16


def test_non_contiguous_slice_matches_contiguous():
    full = torch.randn(3, 5, 200)
    last = full[:, -1, :]
    assert not last.is_contiguous()
    assert torch.equal(fingerprint(last), fingerprint(last.contiguous()))
