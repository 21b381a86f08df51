"""Outlier-pattern labels of GEMM operands: "row", "col" or "none".

Score of a direction: take the variance of every row (or column), and divide the coefficient of
variation of those variances by the value i.i.d. Gaussian data would give, sqrt(2 / (n - 1)) for rows
of n elements. About 1 means no structure; a few dominant rows push the row score far above 1.
A label is the direction whose score passes `threshold`, the larger one if both do.
The default threshold comes from the study in docs/patterns.md (scripts/pattern_threshold_study.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .modes import LABELS, SLOTS

DEFAULT_THRESHOLD = 4.0

_SWAP = {"row": "col", "col": "row", "none": "none"}


@dataclass(frozen=True)
class PatternResult:
    label: str
    row_score: float
    col_score: float


def _direction_score(t: torch.Tensor, dim: int) -> float:
    """Normalized CV of the variances of the slices along `dim` (dim=1: one variance per row)."""
    n = t.shape[dim]
    if n < 2 or t.shape[1 - dim] < 2:
        return 0.0
    variances = t.var(dim=dim)
    mean = variances.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return 0.0
    cv = variances.std() / mean
    return float(cv / math.sqrt(2.0 / (n - 1)))


def pattern_scores(t: torch.Tensor) -> tuple[float, float]:
    """(row_score, col_score) of `t` flattened to 2-D [R, C] (leading dims merged into rows)."""
    t2 = t.detach().reshape(-1, t.shape[-1]).to(torch.float64)
    return _direction_score(t2, 1), _direction_score(t2, 0)


def classify(t: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> PatternResult:
    """Label `t` as "row" (a few rows dominate), "col" (a few columns dominate) or "none".

    Non-finite entries make no label ("none", scores NaN): they are a numerics problem, not a pattern.
    """
    if threshold <= 0 or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a positive finite number, got {threshold!r}")
    if not torch.isfinite(t).all():
        return PatternResult("none", math.nan, math.nan)
    row, col = pattern_scores(t)
    if max(row, col) <= threshold:
        label = "none"
    else:
        label = "row" if row >= col else "col"
    return PatternResult(label, row, col)


def transpose_label(label: str) -> str:
    """The label of the transposed operand: transposing swaps rows and columns."""
    if label not in LABELS:
        raise ValueError(f"unknown pattern label {label!r}; allowed: {', '.join(LABELS)}")
    return _SWAP[label]


def slot_pair_keys(label_x: str, label_w: str, label_g: str) -> dict[str, str]:
    """Pair key "left-right" of each GEMM slot from the labels of x [tokens, in], W [out, in], g [tokens, out].

    Labels are taken in the orientation each operand has in its GEMM (see adahop.modes):
    forward_y  = x @ W^T  -> (x, W transposed); backward_gx = g @ W -> (g, W);
    backward_gw = g^T @ x -> (g transposed, x).
    """
    for name, label in (("x", label_x), ("w", label_w), ("g", label_g)):
        if label not in LABELS:
            raise ValueError(f"label of {name}: unknown {label!r}; allowed: {', '.join(LABELS)}")
    pairs = {
        "forward_y": (label_x, transpose_label(label_w)),
        "backward_gx": (label_g, label_w),
        "backward_gw": (transpose_label(label_g), label_x),
    }
    assert tuple(pairs) == SLOTS
    return {slot: f"{left}-{right}" for slot, (left, right) in pairs.items()}


if __name__ == "__main__":  # python -m adahop.patterns: pictures of a checkpoint (adahop/patterns_cli.py)
    import sys

    from adahop.patterns_cli import main

    sys.exit(main())
