"""Outlier extraction: which rows of a K-major operand leave the MXFP4 path for a BF16 GEMM.

Both extraction modes reduce to the same operation in K-major form ([rows, K], K the inner dimension):
OE-left takes rows of the left operand A (output rows), OE-right takes rows of Bt = B^T, i.e.
columns of B (output columns). Rows are ranked by L2 norm, recomputed on every call.
"""

from __future__ import annotations

import torch

DEFAULT_OUTLIER_K = 64


def check_outlier_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"outlier_k must be a non-negative integer, got {k!r}")
    return k


def top_rows(k_major: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (int64, a set: in no particular order) of the min(k, rows) rows of `k_major` with the largest
    L2 norm.

    Non-finite rows rank first, so a NaN/Inf row goes through the BF16 path where it stays visible. The users
    take the indices as a set (zeroed rows, a gather and an index_add_ of distinct rows, each row's product
    computed on its own), so no order is imposed: a sort would be one more launch per OE slot (~110 a step on
    the 1B model).
    """
    check_outlier_k(k)
    k = min(k, k_major.shape[0])
    return torch.topk(row_norms(k_major), k, largest=True, sorted=False).indices


def row_norms(k_major: torch.Tensor) -> torch.Tensor:
    """The rows' L2 norms as top_rows ranks them: float32, non-finite rows as +inf."""
    # float32 accumulation without a float32 copy of the operand (it is as large as x or g)
    return nonfinite_first(
        torch.linalg.vector_norm(k_major, dim=-1, dtype=torch.promote_types(k_major.dtype, torch.float32))
    )


def nonfinite_first(norms: torch.Tensor) -> torch.Tensor:
    """NaN and inf norms as +inf, so that their rows rank first."""
    return torch.nan_to_num(norms, nan=torch.inf, posinf=torch.inf)  # one op (norms are never -inf)
