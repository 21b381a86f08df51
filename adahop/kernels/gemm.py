"""The MXFP4-exact GEMM on Hopper: fp8 e4m3 blockwise-scaled `torch._scaled_mm` + exact correction of the
rare blocks the fp8 form cannot hold.

C = A @ Bt^T with A [M, K], Bt [N, K], both K-major and re-encoded from MXFP4 to fp8 (adahop.kernels.quantize).
cuBLAS accumulates the exact products q_a q_b 2^(...) in fp32 (tensor cores, per-128 partial sums rescaled),
so C equals the reference float32 GEMM of the dequantized operands up to fp32 accumulation order.

Deficient blocks (written as zero in fp8, counted by the kernels) are added back exactly:
A B^T = A8 B8^T + Ar B^T + A8 Br^T, with Ar / Br the deficient parts and A8 = A - Ar, B8 = B - Br,
computed in float32 on the few rows and 32-column blocks involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..mx.quantize import dequantize_mxfp4
from .deferred import counter_for
from .quantize import deficient_blocks

# Running totals of what the fp8 path saw (host ints; updated where the count is read anyway).
STATS = {"gemms": 0, "blocks": 0, "deficient_blocks": 0, "corrected_gemms": 0, "fallback_gemms": 0, "redone_steps": 0}


def reset_stats() -> None:
    for k in STATS:
        STATS[k] = 0


@dataclass
class FastOperand:
    """A K-major operand in both forms written by the fused kernel."""

    fp8: torch.Tensor  # float8_e4m3fn [R, K]
    gscale: torch.Tensor  # fp32 [K/128, R] (1x128 groups) or [R/128, K/128] (tile)
    count: torch.Tensor  # int32 [1]: deficient blocks (held as zero in fp8)
    packed: Optional[torch.Tensor] = None  # uint8 [R, K/2]
    scales: Optional[torch.Tensor] = None  # uint8 [R, K/32]
    tile: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def shape(self):
        return self.fp8.shape

    def ensure_packed(self) -> "FastOperand":
        """Write the packed form if it was skipped (the kernel reruns with the same seed: same bits)."""
        if self.packed is None:
            out = self.meta["repack"]()
            self.packed, self.scales = out["packed"], out["scales"]
        return self

    def dequantize(self) -> torch.Tensor:
        """float32 [R, K] reference values (from the packed form: exact, NaN blocks included)."""
        self.ensure_packed()
        return dequantize_mxfp4(self.packed, self.scales, axis=-1, dtype=torch.float32)

    def fp8_dequantize(self) -> torch.Tensor:
        """float32 values the fp8 form holds (deficient blocks as zero)."""
        R, K = self.fp8.shape
        s = self.gscale.repeat_interleave(128, 0) if self.tile else self.gscale.t()  # [R, K/128]
        return self.fp8.to(torch.float32) * s.repeat_interleave(128, 1)


def _scaled_mm(a: FastOperand, b: FastOperand, out_dtype: torch.dtype) -> torch.Tensor:
    if a.tile:
        raise ValueError("the left operand must use 1x128 scales")
    scale_a = a.gscale.t()  # [M, K/128], column-major
    scale_b = b.gscale.t() if b.tile else b.gscale  # [K/128, N/128] column-major view, or [K/128, N] contiguous
    return torch._scaled_mm(a.fp8, b.fp8.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)


def _correction(a: FastOperand, b: FastOperand, da: torch.Tensor, db: torch.Tensor, out: torch.Tensor) -> None:
    """out (float32) += Ar B^T + A8 Br^T, on the rows and 32-blocks that hold deficient blocks."""
    if da.any():
        rows = da.any(1).nonzero().squeeze(1)
        blks = da.any(0).nonzero().squeeze(1)
        cols = (blks[:, None] * 32 + torch.arange(32, device=blks.device)).reshape(-1)
        a_full = dequantize_mxfp4(a.packed[rows], a.scales[rows], axis=-1, dtype=torch.float32)
        ar = torch.where(da[rows].repeat_interleave(32, 1), a_full, 0.0)[:, cols]
        b_cols = b.dequantize()[:, cols]
        out.index_add_(0, rows, ar @ b_cols.t())
    if db.any():
        rows = db.any(1).nonzero().squeeze(1)
        blks = db.any(0).nonzero().squeeze(1)
        cols = (blks[:, None] * 32 + torch.arange(32, device=blks.device)).reshape(-1)
        b_full = dequantize_mxfp4(b.packed[rows], b.scales[rows], axis=-1, dtype=torch.float32)
        br = torch.where(db[rows].repeat_interleave(32, 1), b_full, 0.0)[:, cols]
        a8 = a.fp8_dequantize()[:, cols]
        out.index_add_(1, rows, a8 @ br.t())


@torch.compiler.disable
def fp8_matmul(a: FastOperand, b: FastOperand, out_dtype: torch.dtype) -> torch.Tensor:
    """a @ b^T, MXFP4-exact (see module docstring)."""
    STATS["gemms"] += 1
    STATS["blocks"] += (a.fp8.numel() + b.fp8.numel()) // 32
    shared = counter_for(a.fp8.device)
    if shared is not None and a.count is shared and b.count is shared:
        # the counts went to the step's counter, read once per forward+backward (adahop.kernels.deferred)
        try:
            return _scaled_mm(a, b, out_dtype)
        except RuntimeError:
            return _fallback(a, b, out_dtype)
    # one host sync per GEMM: never let a deficient block pass unnoticed
    counts = torch.stack((a.count[0], b.count[0])).tolist()
    if counts[0] == 0 and counts[1] == 0:
        try:
            return _scaled_mm(a, b, out_dtype)
        except RuntimeError:  # a shape or dtype cuBLAS refuses: same numbers, slowly
            return _fallback(a, b, out_dtype)
    STATS["deficient_blocks"] += counts[0] + counts[1]
    STATS["corrected_gemms"] += 1
    a.ensure_packed()
    b.ensure_packed()
    try:
        out = _scaled_mm(a, b, torch.float32)
    except RuntimeError:
        out = a.fp8_dequantize() @ b.fp8_dequantize().t()
    da = deficient_blocks(a.packed, a.scales, a.tile)
    db = deficient_blocks(b.packed, b.scales, b.tile)
    _correction(a, b, da, db, out)
    return out.to(out_dtype)


def _fallback(a: FastOperand, b: FastOperand, out_dtype: torch.dtype) -> torch.Tensor:
    STATS["fallback_gemms"] += 1
    return (a.fp8_dequantize() @ b.fp8_dequantize().t()).to(out_dtype)
