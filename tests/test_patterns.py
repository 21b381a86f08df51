import math

import pytest
import torch

from adahop.modes import PAIR_KEYS
from adahop.patterns import DEFAULT_THRESHOLD, classify, slot_pair_keys, transpose_label


def gaussian(r=1024, c=512, seed=0):
    return torch.randn(r, c, generator=torch.Generator().manual_seed(seed))


def reference_scores(t):
    """float64 re-derivation of the spec formula, by loops over numpy rows/columns."""
    a = t.double().numpy()
    out = []
    for m in (a, a.T):
        v = m.var(axis=1, ddof=1)
        out.append(v.std(ddof=1) / v.mean() / math.sqrt(2 / (m.shape[1] - 1)))
    return out


def test_scores_match_formula():
    t = gaussian(300, 200)
    t[:, 3] *= 7
    res = classify(t)
    row, col = reference_scores(t)
    assert res.row_score == pytest.approx(row, rel=1e-9)
    assert res.col_score == pytest.approx(col, rel=1e-9)


def test_gaussian_is_none_with_scores_near_one():
    for seed in range(3):
        res = classify(gaussian(seed=seed))
        assert res.label == "none"
        assert 0.8 < res.row_score < 1.2 and 0.8 < res.col_score < 1.2


@pytest.mark.parametrize("strength", [8.0, 50.0])
def test_planted_rows_and_columns(strength):
    t = gaussian()
    t[[5, 100], :] *= strength
    assert classify(t).label == "row"
    assert classify(t.t()).label == "col"
    u = gaussian(seed=1)
    u[:, [7, 300, 301]] *= strength
    assert classify(u).label == "col"


def test_threshold_is_applied_and_validated():
    t = gaussian()
    t[:4] *= 3
    res = classify(t)
    assert classify(t, threshold=res.row_score * 1.01).label == "none"
    assert classify(t, threshold=res.row_score * 0.99).label == "row"
    with pytest.raises(ValueError, match="threshold"):
        classify(t, threshold=0)
    assert DEFAULT_THRESHOLD > 1


def test_nonfinite_gives_none():
    t = gaussian()
    t[0, 0] = float("inf")
    res = classify(t)
    assert res.label == "none" and math.isnan(res.row_score)


def test_leading_dims_are_flattened():
    t = gaussian(64 * 8, 256).reshape(8, 64, 256)
    t[..., 9] *= 40
    assert classify(t).label == "col"


def test_slot_pair_keys_orientation():
    keys = slot_pair_keys("col", "row", "row")
    # forward: x (col) with W^T (W row -> col); gx: g (row) with W (row); gw: g^T (row -> col) with x (col)
    assert keys == {"forward_y": "col-col", "backward_gx": "row-row", "backward_gw": "col-col"}
    assert set(slot_pair_keys("none", "col", "row").values()) <= set(PAIR_KEYS)
    assert transpose_label("none") == "none"
    with pytest.raises(ValueError, match="label"):
        slot_pair_keys("rows", "none", "none")
