"""Every expert group in one call per GEMM slot: the grouped GEMMs of adahop.grouped without a loop over groups
and without reading the group sizes on the host.

Each operand is quantized once as a whole, straight to its MXFP4 values in bf16 (on the fast path one pass of the
fused Triton kernel; the saved x of the weight gradient is kept packed), and the three GEMMs run as
`torch._grouped_mm` in BF16 with float32 accumulation on those values:

- BF16 holds every MXFP4 value of a bf16 operand exactly. An element is an E2M1 value (two significant bits)
  times 2^e with the block exponent e >= -127, so a multiple of 2^-128, which bf16's subnormals (spacing
  2^-133) reach; its 8 exponent bits cover the largest, 6 * 2^e < 2^128, unless a block's largest magnitude
  after the Hadamard lies within a factor of 1.5 of bf16's largest finite value (then the GEMM sees inf).
  The products of two such values are exact in float32 (down to its normal range, 2^-126, where a GEMM may
  round or flush them), so each output is the exact product of the MXFP4 operands up to float32 accumulation
  order, rounded once to bf16, as the per-group path gives it.
- Along K = in or out features (the forward GEMM and the input gradient) a row is quantized the same whether
  it is cut into groups or not. Along K = tokens (the weight gradient) each group starts a new MXFP4 / Hadamard
  block and is zero-padded to whole blocks, as in the per-group path: the rows are moved on the device into a
  layout whose groups start at multiples of the block (`token_layout`), sized from the shapes alone.
- Group sizes stay on the device. In a training step's deferred exactness check (adahop.kernels.deferred) an
  invalid size (negative, or more rows than x has) counts into the step's counter, and the step runs again on
  the synchronous path, which reads the sizes and refuses them by name (meanwhile the kernels get the sizes
  clamped into x: `in_range`); outside one they are read and checked before any work.

The modes that quantize or keep whole operands run here (hadamard, none, full_precision; OE-left's weight
gradient runs hadamard), and the extractions of OE-left for the input gradient and OE-right for the weight
gradient (ONE_CALL_MODES). OE modes of y, and OE-right of gx, stay on the per-group loop of adahop.grouped, as
do operands that are not bf16 (torch._grouped_mm multiplies bf16) and random Hadamard signs (the per-group path
gives each group the signs of its own padded length from position 0).
"""

from __future__ import annotations

import torch

from . import backend
from .kernels.deferred import counter_for
from .linear import LinearRecipe, _gw_row_multiple, quantize_for_slot
from .modes import FULL_PRECISION, HADAMARD, NONE, OE_LEFT, OE_RIGHT
from .mx import MXFP4Tensor
from .outliers import nonfinite_first, row_norms

WHOLE_OPERAND_MODES = (HADAMARD, NONE, FULL_PRECISION)
# The modes each slot runs in one call. OE-right of the weight gradient extracts input channels of x per group:
# their norms over each group's tokens come from one segmented sum, their BF16 part from one grouped GEMM.
# OE-left of the input gradient extracts each group's rows of gy of largest norm (two stable sorts rank them
# within their group), their BF16 part from one grouped GEMM of k rows per group.
ONE_CALL_MODES = {
    "forward_y": WHOLE_OPERAND_MODES,
    "backward_gx": (*WHOLE_OPERAND_MODES, OE_LEFT),
    "backward_gw": (*WHOLE_OPERAND_MODES, OE_RIGHT),
}


def in_one_call(recipe: LinearRecipe, slot: str, x_dtype: torch.dtype, w_dtype: torch.dtype) -> bool:
    """Whether the grouped ops run `slot` for every group in one call: a mode that treats its operands whole,
    bf16 operands, the fixed Hadamard signs. Decided from the recipe and dtypes only, so the forward and
    backward ops of one call always agree (the weight gradient's slot also fixes the layout of the saved x^T)."""
    return (
        hasattr(torch, "_grouped_mm")
        and x_dtype == w_dtype == torch.bfloat16
        and not recipe.randomized_hadamard
        and recipe.mode(slot) in ONE_CALL_MODES[slot]
    )


def token_capacity(tokens: int, groups: int, multiple: int) -> int:
    """Rows of the weight-gradient layout: the most padded tokens T rows in G groups can have (each group
    rounded up to `multiple`: sum_e ceil(c_e / m) m <= m floor((T + G (m - 1)) / m)), then rounded up to whole
    128-row groups, the K granularity of the fp8 fast path."""
    rows = multiple * ((tokens + groups * (multiple - 1)) // multiple)
    step = max(multiple, 128)
    return -(-rows // step) * step


def offsets(sizes: torch.Tensor) -> torch.Tensor:
    """End row of each group (int32, what torch._grouped_mm takes)."""
    return torch.cumsum(sizes, 0, dtype=torch.int32)


def token_layout(sizes: torch.Tensor, tokens: int, multiple: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where each of the T rows goes when every group starts at a multiple of `multiple`: (destination row of
    each row, `capacity` for rows past the last group; end row of each padded group, int32; capacity)."""
    groups = sizes.shape[0]
    capacity = token_capacity(tokens, groups, multiple)
    counts = sizes.to(torch.int64)
    padded = (counts + multiple - 1) // multiple * multiple
    ends, padded_ends = torch.cumsum(counts, 0), torch.cumsum(padded, 0)
    rows = torch.arange(tokens, device=sizes.device)
    group = group_of_rows(ends, tokens)
    g = group.clamp(max=groups - 1)
    dest = (padded_ends - padded)[g] + rows - (ends - counts)[g]
    # rows in no group, and (with invalid sizes, flagged elsewhere) rows that would land past the end, go to
    # one spare row that is dropped
    dest = torch.where(group < groups, dest, capacity).clamp(0, capacity)
    return dest, padded_ends.to(torch.int32), capacity


def to_layout(t: torch.Tensor, dest: torch.Tensor, capacity: int) -> torch.Tensor:
    """t's rows at their `dest` rows of a zero [capacity, ...] tensor."""
    out = t.new_zeros(capacity + 1, *t.shape[1:])
    out.index_copy_(0, dest, t)
    return out[:capacity]


def check_sizes(sizes: torch.Tensor, tokens: int) -> None:
    """Invalid group sizes: counted into the step's deferred check where one is open (no host sync; the
    step runs again synchronously), else read and refused here."""
    counter = counter_for(sizes.device)
    if counter is not None:
        # the running sums, not one total: a total of huge sizes can wrap around
        invalid = (sizes < 0).any() | (torch.cumsum(sizes.clamp(min=0).clamp(max=tokens + 1), 0)[-1:] > tokens).any()
        counter.add_(invalid.to(counter.dtype))
    else:
        group_counts(sizes, tokens)


def in_range(sizes: torch.Tensor, tokens: int) -> torch.Tensor:
    """The sizes the kernels see: each >= 0 and together at most T. Valid sizes are unchanged; invalid ones
    (counted by check_sizes, their step redone) must still not index past x: a GEMM's device-side check of its
    offsets would end the process, and the redone step with it."""
    ends = torch.cumsum(sizes.to(torch.int64).clamp(min=0, max=tokens), 0).clamp(max=tokens)
    return torch.diff(ends, prepend=ends.new_zeros(1))


def checked_sizes(sizes: torch.Tensor, tokens: int) -> torch.Tensor:
    """check_sizes, then the sizes the kernels see (in_range): what forward_y and saved_x take, computed once per
    forward call."""
    check_sizes(sizes, tokens)
    return in_range(sizes, tokens)


def group_counts(sizes: torch.Tensor, tokens: int) -> list[int]:
    """The group sizes read on the host (a device-to-host copy), refused unless each is >= 0 and they sum to
    at most the T rows of x."""
    counts = [int(c) for c in sizes.tolist()]
    if any(c < 0 for c in counts) or sum(counts) > tokens:
        raise ValueError(f"group sizes {counts} must be >= 0 and sum to at most the {tokens} rows of x")
    return counts


def exact_bf16(t: torch.Tensor, k_dim: int, recipe: LinearRecipe, slot: str, rounding: str = "nearest") -> torch.Tensor:
    """t transformed and quantized along `k_dim` as `slot` of `recipe` does it, as K-major bf16 values (exact,
    see the module docstring)."""
    return backend.quantize_bf16(
        t,
        k_dim=k_dim,
        hadamard_size=recipe.hadamard_size_for(slot),
        signs=recipe.signs_for(slot, t.shape[k_dim], t.device),
        rounding=rounding,
    )


def _rows_past_groups_zeroed(out: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm leaves the rows past the last group unwritten: they come out zero here."""
    inside = torch.arange(out.shape[0], device=out.device) < ends[-1]
    return torch.where(inside.unsqueeze(1), out, torch.zeros((), dtype=out.dtype, device=out.device))


def forward_y(x: torch.Tensor, weight: torch.Tensor, sizes: torch.Tensor, r: LinearRecipe) -> torch.Tensor:
    """y [T, out] of every group (rows past the last group zero); `sizes` from checked_sizes."""
    groups, out_f, in_f = weight.shape
    ends = offsets(sizes)
    if r.mode("forward_y") == FULL_PRECISION:  # torch._grouped_mm takes dense row- or column-major operands
        a, b = x.contiguous(), weight.contiguous()
    else:
        a = exact_bf16(x, 1, r, "forward_y")
        b = exact_bf16(weight.reshape(groups * out_f, in_f), 1, r, "forward_y").view(groups, out_f, in_f)
    return _rows_past_groups_zeroed(torch._grouped_mm(a, b.transpose(-2, -1), offs=ends), ends).to(x.dtype)


def saved_x(x: torch.Tensor, sizes: torch.Tensor, r: LinearRecipe) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What the weight gradient keeps of x: x^T of the token layout quantized along tokens, packed codes
    [in * capacity / 2] and scales [in * capacity / 32], flat; OE-right adds each group's extracted input
    channels [G, k] (zeroed in the quantized x^T) and their BF16 values in the token layout [capacity * k].
    And the token layout itself, [each row's destination, each padded group's end] (token_layout), for the
    backward.
    `sizes` from checked_sizes."""
    tokens = x.shape[0]
    dest, padded_ends, capacity = token_layout(sizes, tokens, _gw_row_multiple(r))
    layout = to_layout(x, dest, capacity)
    kept = []
    if r.mode("backward_gw") == OE_RIGHT:
        group = group_of_rows(padded_ends, capacity)
        channels = top_channels(layout, group, sizes.shape[0], r.outlier_k)
        chosen = torch.zeros(sizes.shape[0] + 1, x.shape[1], dtype=torch.bool, device=x.device)
        chosen[torch.arange(sizes.shape[0], device=x.device)[:, None], channels] = True
        of_row = channels[group.clamp(max=sizes.shape[0] - 1)]  # rows past the groups are zero
        extracted = torch.gather(layout, 1, of_row).to(torch.bfloat16)
        layout = layout.masked_fill(chosen[group], 0)
        kept = [channels, extracted.reshape(-1)]
    _, packed = quantize_for_slot(layout, 0, r, "backward_gw", packed=True)
    return [packed.data.reshape(-1), packed.scales.reshape(-1), *kept], [dest, padded_ends]


def group_of_rows(ends: torch.Tensor, rows: int) -> torch.Tensor:
    """The group of each of `rows` rows, from the groups' end rows (G for the rows past the last group)."""
    return torch.searchsorted(ends, torch.arange(rows, device=ends.device, dtype=ends.dtype), right=True)


NORM_ROWS = 4096  # rows of the token layout squared in float32 at a time


def top_channels(layout: torch.Tensor, group: torch.Tensor, groups: int, k: int) -> torch.Tensor:
    """[G, min(k, in)] indices of each group's input channels of largest L2 norm over its tokens, as
    adahop.outliers.top_rows picks them from the group's x^T (float32 norms, non-finite first)."""
    sums = torch.zeros(groups + 1, layout.shape[1], dtype=torch.float32, device=layout.device)
    for start in range(0, layout.shape[0], NORM_ROWS):  # float32 squares of a slice at a time, not of all x
        rows = slice(start, start + NORM_ROWS)
        sums.index_add_(0, group[rows], layout[rows].float().square())
    norms = nonfinite_first(sums[:groups].sqrt())
    return torch.topk(norms, min(k, layout.shape[1]), dim=1, largest=True, sorted=False).indices


def input_gradient(gy: torch.Tensor, weight: torch.Tensor, sizes: torch.Tensor, r: LinearRecipe) -> torch.Tensor:
    """gx [T, in] of every group from gy [T, out] (rows past the last group zero); `sizes` from in_range."""
    groups, out_f, in_f = weight.shape
    ends = offsets(sizes)
    mode = r.mode("backward_gx")
    if mode == FULL_PRECISION:
        a, b = gy.contiguous(), weight.contiguous()
    else:
        rows = None
        if mode == OE_LEFT:  # each group's rows of largest norm leave the quantization for a BF16 GEMM
            rows = top_rows_per_group(gy, sizes, r.outlier_k)
            a = exact_bf16(_rows_zeroed(gy, rows), 1, r, "backward_gx", r.grad_rounding)
        else:
            a = exact_bf16(gy, 1, r, "backward_gx", r.grad_rounding)
        # W_e quantized along out: the stack as [G * out, in] along dim 0, whose blocks never cross experts
        # (out is a multiple of the block); [in, G * out] -> [G, out, in]
        wt = exact_bf16(weight.reshape(groups * out_f, in_f), 0, r, "backward_gx")
        b = wt.view(in_f, groups, out_f).permute(1, 0, 2).contiguous().transpose(-2, -1)
    gx = torch._grouped_mm(a, b, offs=ends)
    if mode == OE_LEFT:  # added after the rounding, as the linear adds it
        k = rows.shape[1]
        picked = torch.cat((gy, gy.new_zeros(1, out_f)))[rows.reshape(-1)]  # row T: a zero row for a short group
        every_k = torch.arange(1, groups + 1, device=gy.device, dtype=torch.int32) * k
        part = torch._grouped_mm(picked, weight.contiguous(), offs=every_k)
        gx = torch.cat((gx, gx.new_zeros(1, in_f))).index_add_(0, rows.reshape(-1), part)[:-1]
    return _rows_past_groups_zeroed(gx, ends)


def top_rows_per_group(t: torch.Tensor, sizes: torch.Tensor, k: int) -> torch.Tensor:
    """[G, k] indices of each group's min(k, size) rows of `t` of largest L2 norm, as adahop.outliers.top_rows
    picks them from the group's rows (float32 norms, non-finite first; rows of equal norm may be taken in
    another order); a group with fewer than k rows fills its slots with T (no row)."""
    tokens = t.shape[0]
    norms = row_norms(t)
    ends = torch.cumsum(sizes.to(torch.int64), 0)
    group = group_of_rows(ends, tokens)
    # rows by group, within a group by norm (largest first): two stable sorts
    order = torch.argsort(norms, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    slot = torch.arange(k, device=t.device)
    first = (ends - sizes.to(torch.int64))[:, None] + slot
    taken = torch.where(slot < sizes[:, None], order[first.clamp(max=max(tokens - 1, 0))], tokens)
    return taken


def _rows_zeroed(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t with `rows` (T: none) zeroed, as a copy."""
    return torch.cat((t, t.new_zeros(1, t.shape[1]))).index_fill_(0, rows.reshape(-1), 0)[:-1]


def weight_gradient(
    gy: torch.Tensor,
    x: torch.Tensor,
    sizes: torch.Tensor,
    kept: list[torch.Tensor],
    r: LinearRecipe,
    in_f: int,
    layout: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """gw [G, out, in] of every group (zero for an empty one) from gy [T, out] and what `saved_x` kept (`x`
    itself where the recipe keeps it); `sizes` from in_range. `layout`: the token layout saved_x kept (None where
    the recipe keeps x itself, which saved_x never saw: computed here)."""
    multiple = _gw_row_multiple(r)
    if layout is not None:
        dest, padded_ends = layout
        capacity = token_capacity(gy.shape[0], sizes.shape[0], multiple)
    else:
        dest, padded_ends, capacity = token_layout(sizes, gy.shape[0], multiple)
    g_layout = to_layout(gy, dest, capacity)
    mode = r.mode("backward_gw")
    if mode == FULL_PRECISION:
        a, b = g_layout.t().contiguous(), to_layout(x, dest, capacity)
    else:
        a = exact_bf16(g_layout, 0, r, "backward_gw", r.grad_rounding)  # [out, capacity]
        packed = MXFP4Tensor(
            kept[0].view(in_f, capacity // 2), kept[1].view(in_f, capacity // 32), axis=-1, dtype=gy.dtype
        )
        b = backend.dequantize_bf16(packed).t()  # [capacity, in]
    gw = torch._grouped_mm(a, b, offs=padded_ends)
    if mode == OE_RIGHT:  # the extracted channels' BF16 part, added after the rounding as the linear adds it
        channels = kept[2]
        groups, k = channels.shape
        extracted = kept[3].view(capacity, k)
        if k % 8:  # torch._grouped_mm wants 16-byte rows: zero columns, sliced off again
            extracted = torch.nn.functional.pad(extracted, (0, 8 - k % 8))
        part = torch._grouped_mm(g_layout.t().contiguous(), extracted, offs=padded_ends)[..., :k]
        gw.scatter_add_(2, channels[:, None, :].expand(groups, gw.shape[1], k), part)
    return gw
