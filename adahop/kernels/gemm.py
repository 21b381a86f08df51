"""The MXFP4-exact GEMM on Hopper: fp8 e4m3 blockwise-scaled `torch._scaled_mm` + exact correction of the
rare blocks the fp8 form cannot hold.

C = A @ Bt^T with A [M, K], Bt [N, K], both K-major and re-encoded from MXFP4 to fp8 (adahop.kernels.quantize).
cuBLAS accumulates the exact products q_a q_b 2^(...) in fp32 (tensor cores, per-128 partial sums rescaled),
so C equals the reference float32 GEMM of the dequantized operands up to fp32 accumulation order.

Deficient blocks (written as zero in fp8, counted by the kernels) are added back exactly:
A B^T = A8 B8^T + Ar B^T + A8 Br^T, with Ar / Br the deficient parts and A8 = A - Ar, B8 = B - Br,
computed in float32 on the few rows and 32-column blocks involved.

Left operands come in the wide form (e5m2, exact for gaps up to 28). Where the left operand carries row
flags (the input-gradient GEMM), the flagged rows are recomputed exactly in the GEMM itself, with no host
sync (`_fix_rows`); only what does not fit its fixed row slots reaches the counts above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..mx.quantize import dequantize_mxfp4
from .deferred import counter_for
from .quantize import deficient_blocks
from .state import active


def stats() -> dict:
    """Running totals of what the fp8 path saw (the active FastPathState's: GEMMs, blocks, deficient blocks,
    corrected and fallback GEMMs, redone steps)."""
    return active().stats


def reset_stats() -> None:
    active().reset_stats()


def deficient_by_tag() -> dict:
    """Where deficient blocks were found, by "<slot>:<side>" (side a = left operand, b = right): GEMMs checked,
    blocks checked, deficient blocks, GEMMs with any, 128x128 tiles holding any, and a histogram of the exponent
    gaps (group maximum - block) of the deficient ones. Filled on the checked (per-GEMM) path while recording."""
    return active().deficient_by_tag


def _record(tag: str, side: str, op: "FastOperand", mask: Optional[torch.Tensor]) -> None:
    rec = active().deficient_by_tag.setdefault(
        f"{tag}:{side}",
        {
            "gemms": 0,
            "blocks": 0,
            "deficient": 0,
            "gemms_with_any": 0,
            "tiles": 0,
            "tiles_with_any": 0,
            "gaps": {},
            "shapes": {},
        },
    )
    R, K = op.fp8.shape
    rec["gemms"] += 1
    rec["blocks"] += R * K // 32
    rec["tiles"] += -(-R // 128) * (K // 128)
    rec["shapes"][f"{R}x{K}"] = rec["shapes"].get(f"{R}x{K}", 0) + 1
    if mask is None or not bool(mask.any()):
        return
    from .quantize import block_exponents, group_exponents

    rec["gemms_with_any"] += 1
    rec["deficient"] += int(mask.sum())
    pad = (-R) % 128
    m = torch.nn.functional.pad(mask, (0, 0, 0, pad)) if pad else mask
    rec["tiles_with_any"] += int(m.view(-1, 128, K // 128, 4).any(3).any(1).sum())
    e, _ = block_exponents(op.scales)
    gmax = group_exponents(op.scales, op.tile) + 6
    gmax = (gmax.repeat_interleave(128, 0) if op.tile else gmax).repeat_interleave(4, 1)
    for gap, n in zip(*torch.unique((gmax - e)[mask], return_counts=True)):
        rec["gaps"][int(gap)] = rec["gaps"].get(int(gap), 0) + int(n)


def dump_deficient_report(path: str) -> None:
    """Write deficient_by_tag() and stats() as JSON (atomically)."""
    import json

    from ..files import write_text_atomic

    report = {
        "stats": {**stats(), "rows_fixed": rows_fixed(), "row_slots_fraction": row_slots_fraction()},
        "by_tag": deficient_by_tag(),
    }
    write_text_atomic(path, json.dumps(report, indent=1, sort_keys=True))


def record_deficient(on: bool = True) -> None:
    """Record deficient_by_tag() from now on (or stop): the diagnostics of [quantize.linear.mx.kernels]
    deficient_report, switched on by the trainer, which writes the report when training ends."""
    active().record_deficient = bool(on)


def refused_by_cublas(error: RuntimeError) -> bool:
    """Whether a RuntimeError from a cuBLAS GEMM call is the refusal of a shape or dtype (what the slower
    fallbacks here are for). Out-of-memory and device faults are RuntimeErrors too: they must propagate, not
    turn into a silent slow path."""
    return not isinstance(error, (torch.OutOfMemoryError, torch.AcceleratorError))


@dataclass
class FastOperand:
    """A K-major operand in both forms written by the fused kernel."""

    fp8: torch.Tensor  # float8_e4m3fn [R, K], or float8_e5m2 (wide: a left operand)
    gscale: torch.Tensor  # fp32 [K/128, R] (1x128 groups) or [R/128, K/128] (tile)
    count: torch.Tensor  # int32 [1]: deficient blocks (held as zero in fp8)
    packed: Optional[torch.Tensor] = None  # uint8 [R, K/2]
    scales: Optional[torch.Tensor] = None  # uint8 [R, K/32]
    tile: bool = False
    meta: dict = field(default_factory=dict)
    # uint8 [R]: rows holding deficient blocks, which the GEMM recomputes exactly (these blocks are not in
    # `count`); the packed form is then written too
    row_flags: Optional[torch.Tensor] = None

    @property
    def wide(self) -> bool:
        return self.fp8.dtype == torch.float8_e5m2

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
        if not self.tile:
            return _dequantize_part(self.fp8, self.gscale)
        return self.fp8.to(torch.float32) * self.gscale.repeat_interleave(128, 0).repeat_interleave(128, 1)


def _scaled_mm(a: FastOperand, b: FastOperand, out_dtype: torch.dtype) -> torch.Tensor:
    if a.tile:
        raise ValueError("the left operand must use 1x128 scales")
    return _scaled_mm_parts(a.fp8, a.gscale, b, out_dtype)


def _scaled_mm_parts(
    a_fp8: torch.Tensor, a_gscale: torch.Tensor, b: FastOperand, out_dtype: torch.dtype
) -> torch.Tensor:
    """A @ B^T on cuBLAS's blockwise fp8 GEMM: A [M, K] e4m3 or e5m2 with 1x128 scales a_gscale [K/128, M];
    B e4m3 (cuBLAS takes e5m2 on one side only)."""
    scale_a = a_gscale.t()  # [M, K/128], column-major
    scale_b = b.gscale.t() if b.tile else b.gscale  # [K/128, N/128] column-major view, or [K/128, N] contiguous
    if a_fp8.is_cuda:
        return torch._scaled_mm(a_fp8, b.fp8.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    # CPU stand-in (tests): the same products in float32
    sa = scale_a.repeat_interleave(128, 1)
    return ((a_fp8.to(torch.float32) * sa) @ b.fp8_dequantize().t()).to(out_dtype)


# Rows a GEMM recomputes exactly without asking the host how many there are: room for
# max(ROW_FIX_MIN, M // ROW_FIX_DIVISOR) of them, or more once grown (grow_row_slots); more than that are
# added to the operand's count, so the step is redone exactly (adahop.kernels.deferred). Measured in
# training: docs/kernels.md.
ROW_FIX_MIN = 16
ROW_FIX_DIVISOR = 512
# Growth bound: slots cost two fp8 GEMMs of that many rows (hi + lo parts), so at most 1/16 of the rows
# (12.5% more work in the input-gradient GEMM); beyond that a step is redone instead.
ROW_FIX_MAX_FRACTION = 1 / 16
_RATIO_ONE = 1 << 20  # flagged-row fractions are kept on the device as integers n * _RATIO_ONE // m


def row_fix_capacity(m: int) -> int:
    """Row slots of an [m, K] left operand: a multiple of 16 (cuBLAS-friendly GEMM shapes), at most m."""
    want = max(ROW_FIX_MIN, m // ROW_FIX_DIVISOR, math.ceil(m * active().row_slots_fraction))
    return min(m, -(-want // 16) * 16)


def _device_counter(table: dict, device: torch.device) -> torch.Tensor:
    """The int64 [1] device tensor `table` keeps for `device` (created at zero on first use)."""
    counter = table.get(device)
    if counter is None:
        counter = table[device] = torch.zeros(1, dtype=torch.int64, device=device)
    return counter


def rows_fixed() -> int:
    """Rows recomputed exactly so far (reads the device counters: one sync; for reports)."""
    return sum(int(t.item()) for t in active().rows_fixed.values())


def row_slots_fraction() -> float:
    """The fraction of rows every row-fixing GEMM gets as slots beyond the default (0 until grown)."""
    return active().row_slots_fraction


def _device_key(device: torch.device | str) -> torch.device:
    """The device as tensors report it ("cuda" -> "cuda:<current>"), the key of the per-device counters."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def grow_row_slots(device: torch.device | str, group=None) -> Optional[float]:
    """After a redone step: if some GEMM of it flagged more rows than it had slots, give every GEMM slots
    for twice that fraction of its rows from now on (at most ROW_FIX_MAX_FRACTION), so that the next steps
    with as many far-apart rows stay on the fast path. Agreed over the ranks (one all-reduce, the same on
    every rank, so that they keep deferring the same steps). Returns the new fraction, or None if the slots
    were not what failed (a block neither part holds) or are already as large as allowed."""
    state = active()
    device = _device_key(device)
    peak = state.overflow_ratio.get(device)
    ratio = peak.clone() if peak is not None else torch.zeros(1, dtype=torch.int64, device=device)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(ratio, op=dist.ReduceOp.MAX, group=group)
    if peak is not None:
        peak.zero_()
    wanted = min(ROW_FIX_MAX_FRACTION, 2 * int(ratio.item()) / _RATIO_ONE)
    if wanted <= state.row_slots_fraction:
        return None
    state.row_slots_fraction = wanted
    return wanted


def simulate_row_overflow(device: torch.device | str, fraction: float) -> None:
    """Test hook: as if a GEMM of this step had flagged `fraction` of its rows, more than its slots (the
    step is redone: one block counted as left out in the active deferred check)."""
    from .deferred import deferred, simulate_dropped_blocks

    if not deferred():  # like the real record: only a deferred step's overflow redoes it and grows slots
        return
    peak = _device_counter(active().overflow_ratio, _device_key(device))
    peak.fill_(max(int(peak.item()), int(fraction * _RATIO_ONE)))
    simulate_dropped_blocks(1)


def reset_row_slots() -> None:
    """Back to the default slots (tests; a new process starts there)."""
    active().row_slots_fraction = 0.0
    active().overflow_ratio.clear()


def _fix_rows(a: FastOperand, b: FastOperand, out: torch.Tensor) -> None:
    """Overwrite out's rows that `a` flags with their exact values, hi + lo parts (fused_row_split) in one
    GEMM, with no host sync: a fixed number of row slots (unused ones recompute row 0, which is harmless:
    exact); flagged rows beyond them, and blocks neither part holds, go to a.count. The slots and
    counters come from one launch (adahop.kernels.row_fix)."""
    from .quantize import fused_row_split
    from .row_fix import row_fix_index

    m = a.fp8.shape[0]
    cap = row_fix_capacity(m)
    if cap == 0:  # an empty operand (e.g. an MoE expert that got no tokens)
        return
    flags = a.row_flags
    # only what redoes a step (the deferred check's counter) and only GEMMs that more slots can help
    # (below 256 rows the bound is under the 16 default) may grow the slots
    grows = a.count is counter_for(flags.device) and m * ROW_FIX_MAX_FRACTION > ROW_FIX_MIN
    state = active()
    peak = _device_counter(state.overflow_ratio, flags.device) if grows else None
    rows = row_fix_index(flags, cap, _device_counter(state.rows_fixed, flags.device), a.count, peak, _RATIO_ONE)
    parts = fused_row_split(a.packed, a.scales, rows, a.count)
    try:
        both = _scaled_mm_parts(parts["both"], parts["both_gscale"], b, torch.float32)  # [2 cap, N]
        exact = both[:cap] + both[cap:]
    except RuntimeError as e:  # a shape or dtype cuBLAS refuses: the same exact parts in float32
        if not refused_by_cublas(e):
            raise
        stats()["fallback_gemms"] += 1
        hi_lo = _dequantize_part(parts["hi"], parts["hi_gscale"]) + _dequantize_part(parts["lo"], parts["lo_gscale"])
        exact = hi_lo @ b.fp8_dequantize().t()
    out.index_copy_(0, rows, exact.to(out.dtype))


def _dequantize_part(fp8: torch.Tensor, gscale: torch.Tensor) -> torch.Tensor:
    """float32 values of an fp8 [R, K] operand with 1x128 scales gscale [K/128, R]."""
    return fp8.to(torch.float32) * gscale.t().repeat_interleave(128, 1)


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
def fp8_matmul(a: FastOperand, b: FastOperand, out_dtype: torch.dtype, tag: Optional[str] = None) -> torch.Tensor:
    """a @ b^T, MXFP4-exact (see module docstring). `tag` (the GEMM slot) only labels deficient_by_tag()."""
    state = active()
    state.stats["gemms"] += 1
    state.stats["blocks"] += (a.fp8.numel() + b.fp8.numel()) // 32
    shared = counter_for(a.fp8.device)
    out = None
    if a.row_flags is not None:
        out = _scaled_mm_or_fallback(a, b, out_dtype)
        _fix_rows(a, b, out)
    if shared is not None and a.count is shared and b.count is shared:
        # the counts went to the step's counter, read once per forward+backward (adahop.kernels.deferred)
        return out if out is not None else _scaled_mm_or_fallback(a, b, out_dtype)
    # one host sync per GEMM: never let a deficient block pass unnoticed
    counts = torch.stack((a.count[0], b.count[0])).tolist()
    tag = tag if state.record_deficient else None
    if counts[0] == 0 and counts[1] == 0:
        if tag is not None:
            fixed = a.row_flags is not None and bool(a.row_flags.any())
            _record(tag, "a", a, deficient_blocks(a.packed, a.scales, a.tile, a.wide) if fixed else None)
            _record(tag, "b", b, None)
        return out if out is not None else _scaled_mm_or_fallback(a, b, out_dtype)
    # the exact per-GEMM correction of every block the fp8 forms do not hold (row fixes included)
    state.stats["deficient_blocks"] += counts[0] + counts[1]
    state.stats["corrected_gemms"] += 1
    a.ensure_packed()
    b.ensure_packed()
    try:
        out = _scaled_mm(a, b, torch.float32)
    except RuntimeError as e:
        if not refused_by_cublas(e):
            raise
        out = a.fp8_dequantize() @ b.fp8_dequantize().t()
    da = deficient_blocks(a.packed, a.scales, a.tile, a.wide)
    db = deficient_blocks(b.packed, b.scales, b.tile, b.wide)
    if tag is not None:
        _record(tag, "a", a, da)
        _record(tag, "b", b, db)
    _correction(a, b, da, db, out)
    return out.to(out_dtype)


def _scaled_mm_or_fallback(a: FastOperand, b: FastOperand, out_dtype: torch.dtype) -> torch.Tensor:
    try:
        return _scaled_mm(a, b, out_dtype)
    except RuntimeError as e:  # a shape or dtype cuBLAS refuses: same numbers, slowly
        if not refused_by_cublas(e):
            raise
        return _fallback(a, b, out_dtype)


def _fallback(a: FastOperand, b: FastOperand, out_dtype: torch.dtype) -> torch.Tensor:
    stats()["fallback_gemms"] += 1
    return (a.fp8_dequantize() @ b.fp8_dequantize().t()).to(out_dtype)
