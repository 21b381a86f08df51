"""adahop.outliers.top_rows against the float64 definition (tests/reference.py), adversarial rows included."""

import pytest
import reference as ref
import torch

from adahop.outliers import check_outlier_k, top_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_rows_match_float64_ranking(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(200, 96, generator=g)
    t[torch.randperm(200, generator=g)[:10]] *= torch.logspace(0, 3, 10)[:, None]  # a spread of outlier rows
    t = t.to(dtype)
    got = top_rows(t, 16)
    want = ref.top_rows(t.double().numpy(), 16)
    assert sorted(got.tolist()) == sorted(want.tolist())
    assert got.dtype == torch.int64


def test_non_finite_and_overflowing_rows_rank_first():
    t = torch.randn(64, 64)
    t[5, 3] = float("nan")
    t[9, 0] = float("-inf")
    t[20] = 3e38  # the squares overflow float32: ranked with the non-finite rows, not dropped
    t[30] *= 1e3  # the largest finite row
    assert sorted(top_rows(t, 4).tolist()) == [5, 9, 20, 30]
    assert top_rows(t, 0).numel() == 0 and top_rows(t, 1000).numel() == 64


def test_bad_k_refused():
    for k in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="outlier_k"):
            check_outlier_k(k)


def test_float64_operands_are_ranked_in_float64():
    t = torch.randn(50, 64, dtype=torch.float64)
    t[7] *= 10
    assert sorted(top_rows(t, 3).tolist()) == sorted(ref.top_rows(t.numpy(), 3).tolist())
