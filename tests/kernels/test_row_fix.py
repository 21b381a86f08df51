"""The one-launch bookkeeping of the exact row recomputation (adahop.kernels.row_fix) against its torch
restatement and against plain Python, on the GPU or on the CPU with TRITON_INTERPRET=1 (conftest.py)."""

from __future__ import annotations

import pytest
import torch

from adahop.kernels.row_fix import CHUNK, reference_row_fix_index, row_fix_index

DEV = "cuda" if torch.cuda.is_available() else "cpu"
RATIO_ONE = 1 << 20


def counters(rows_fixed=0, count=0, peak=0):
    return (
        torch.tensor([rows_fixed], dtype=torch.int64, device=DEV),
        torch.tensor([count], dtype=torch.int32, device=DEV),
        torch.tensor([peak], dtype=torch.int64, device=DEV),
    )


def flags_of(R, flagged, value=1):
    f = torch.zeros(R, dtype=torch.uint8)
    f[list(flagged)] = value
    return f.to(DEV)


# (R, cap, flagged rows): none, fewer than the slots, exactly the slots, more, all; across chunk borders
CASES = [
    (1, 1, []),
    (1, 1, [0]),
    (5, 5, [1, 4]),
    (64, 16, []),
    (64, 16, [3, 17, 40]),
    (64, 16, list(range(0, 64, 4))),
    (64, 16, list(range(0, 64, 3))),
    (64, 16, list(range(64))),
    (CHUNK + 7, 16, [0, CHUNK - 1, CHUNK, CHUNK + 6]),
    (3 * CHUNK + 100, 48, list(range(5, 3 * CHUNK + 100, 61))),  # 52 flagged: overflow across chunks
    (2 * CHUNK, 2 * CHUNK, list(range(1, 2 * CHUNK, 2))),  # slots beyond one chunk
]


@pytest.mark.parametrize("R,cap,flagged", CASES)
@pytest.mark.parametrize("with_peak", [True, False])
def test_row_fix_index_matches_python_and_the_torch_restatement(R, cap, flagged, with_peak):
    flags = flags_of(R, flagged, value=1 if len(flagged) % 2 else 5)  # any nonzero byte flags a row
    n = len(flagged)
    start = dict(rows_fixed=11, count=3, peak=7)  # counters already holding totals of earlier GEMMs
    rf, cnt, pk = counters(**start)
    rows = row_fix_index(flags, cap, rf, cnt, pk if with_peak else None, RATIO_ONE)
    # plain Python: the flagged rows in order, then row 0 in the unused slots
    want = (sorted(flagged) + [0] * cap)[:cap]
    assert rows.dtype == torch.int64 and rows.cpu().tolist() == want
    assert int(rf.item()) == 11 + n
    assert int(cnt.item()) == 3 + max(n - cap, 0)
    assert int(pk.item()) == (max(7, n * RATIO_ONE // R) if with_peak and n > cap else 7)
    # the torch restatement gives the same
    rf2, cnt2, pk2 = counters(**start)
    ref = reference_row_fix_index(flags, cap, rf2, cnt2, pk2 if with_peak else None, RATIO_ONE)
    assert torch.equal(rows, ref)
    assert (rf.item(), cnt.item(), pk.item()) == (rf2.item(), cnt2.item(), pk2.item())


def test_peak_keeps_a_larger_earlier_fraction():
    flags = flags_of(64, range(20))  # 20 of 64 > 16 slots: fraction 20/64
    rf, cnt, pk = counters(peak=RATIO_ONE // 2)
    row_fix_index(flags, 16, rf, cnt, pk, RATIO_ONE)
    assert int(pk.item()) == RATIO_ONE // 2
    rf, cnt, pk = counters(peak=1)
    row_fix_index(flags, 16, rf, cnt, pk, RATIO_ONE)
    assert int(pk.item()) == 20 * RATIO_ONE // 64


def test_row_fix_index_refuses_bad_input():
    rf, cnt, pk = counters()
    with pytest.raises(ValueError, match="uint8"):
        row_fix_index(torch.zeros(8, dtype=torch.int32, device=DEV), 4, rf, cnt, pk, RATIO_ONE)
    with pytest.raises(ValueError, match="row slots"):
        row_fix_index(torch.zeros(8, dtype=torch.uint8, device=DEV), 9, rf, cnt, pk, RATIO_ONE)
    with pytest.raises(ValueError, match="row slots"):
        row_fix_index(torch.zeros(8, dtype=torch.uint8, device=DEV), 0, rf, cnt, pk, RATIO_ONE)
    with pytest.raises(ValueError, match="int64"):
        row_fix_index(torch.zeros(8, dtype=torch.uint8, device=DEV), 4, cnt, cnt, pk, RATIO_ONE)
