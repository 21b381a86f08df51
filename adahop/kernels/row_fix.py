"""The bookkeeping of the exact row recomputation (adahop.kernels.gemm._fix_rows) in one launch.

A left operand's quantizer flags the rows holding a block its wide fp8 form cannot hold (row_flags, uint8
[R]). Before those rows are recomputed, the GEMM needs, with no host sync:
    rows        int64 [cap]: the flagged rows in ascending order, unused slots 0 (as torch.nonzero_static
                with fill_value=0 gives them; recomputing row 0 again is exact, so harmless);
    rows_fixed  += n, the number of flagged rows (a running device total, for reports);
    count       += max(n - cap, 0): flagged rows without a slot, so the step is redone exactly;
    peak        = max(peak, n * ratio_one // R if n > cap else 0): the largest overflowing fraction,
                from which the slots grow (adahop.kernels.gemm.grow_row_slots).
In torch that is a dozen small ops a GEMM (nonzero_static, a sum, comparisons, three in-place updates), each
a launch from the host, for every input-gradient GEMM of a step. The kernel is one program: a prefix sum over
the flags in chunks, then the four results.

`reference_row_fix_index` restates it in torch; the kernel must match it exactly.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# flags read per iteration of the single program: a 16k-token operand takes 4 iterations
CHUNK = 4096
NUM_WARPS = 8


@triton.jit
def _row_fix_index_kernel(
    flags_ptr,
    R,
    rows_ptr,
    CAP,
    rows_fixed_ptr,
    count_ptr,
    peak_ptr,
    RATIO_ONE,
    HAS_PEAK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    n = tl.zeros([], dtype=tl.int32)
    for start in range(0, R, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        f = (tl.load(flags_ptr + offs, mask=offs < R, other=0) != 0).to(tl.int32)
        slot = n + tl.cumsum(f, axis=0) - f  # exclusive prefix sum: this row's slot if flagged
        tl.store(rows_ptr + slot, offs.to(tl.int64), mask=(f > 0) & (slot < CAP))
        n += tl.sum(f, axis=0)
    for start in range(0, CAP, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(rows_ptr + offs, tl.zeros([CHUNK], dtype=tl.int64), mask=(offs < CAP) & (offs >= n))
    tl.atomic_add(rows_fixed_ptr, n.to(tl.int64))
    over = n - CAP
    if over > 0:
        tl.atomic_add(count_ptr, over)
        if HAS_PEAK:
            tl.atomic_max(peak_ptr, n.to(tl.int64) * RATIO_ONE // R)


def row_fix_index(
    flags: torch.Tensor,
    cap: int,
    rows_fixed: torch.Tensor,
    count: torch.Tensor,
    peak: Optional[torch.Tensor],
    ratio_one: int,
) -> torch.Tensor:
    """The `cap` row slots of `flags` (see the module docstring), updating rows_fixed (int64 [1]), count
    (int32 [1]) and, if given, peak (int64 [1]) on the device. Returns rows (int64 [cap])."""
    if flags.dim() != 1 or flags.dtype != torch.uint8:
        raise ValueError(f"row flags are uint8 [R], got {flags.dtype} {tuple(flags.shape)}")
    R = flags.shape[0]
    if not 0 < cap <= R:
        raise ValueError(f"row slots must be in 1..{R} (the rows), got {cap}")
    if (
        rows_fixed.dtype != torch.int64
        or count.dtype != torch.int32
        or (peak is not None and peak.dtype != torch.int64)
    ):
        raise ValueError("rows_fixed and peak are int64 [1] counters, count an int32 [1] one")
    rows = torch.empty(cap, dtype=torch.int64, device=flags.device)
    _row_fix_index_kernel[(1,)](
        flags,
        R,
        rows,
        cap,
        rows_fixed,
        count,
        peak if peak is not None else rows_fixed,
        ratio_one,
        HAS_PEAK=peak is not None,
        CHUNK=CHUNK,
        num_warps=NUM_WARPS,
    )
    return rows


def reference_row_fix_index(
    flags: torch.Tensor,
    cap: int,
    rows_fixed: torch.Tensor,
    count: torch.Tensor,
    peak: Optional[torch.Tensor],
    ratio_one: int,
) -> torch.Tensor:
    """torch restatement of row_fix_index (same results, same counter updates)."""
    R = flags.shape[0]
    rows = torch.nonzero_static(flags, size=cap, fill_value=0).squeeze(1)
    n = flags.ne(0).sum(dtype=torch.int64)
    rows_fixed.add_(n)
    count.add_((n - cap).clamp_(min=0).to(count.dtype))
    if peak is not None:
        torch.maximum(peak, torch.where(n > cap, n * ratio_one // R, 0), out=peak)
    return rows
