"""MXFP4 AdaHOP grouped GEMM for MoE experts: y_e = x_e @ W_e^T for each expert's token group.

Each expert's group runs the GEMMs of an AdaHOP linear (adahop.linear: `forward_gemm`, `prepare_right`,
`slot_gemm`), so every mode, stochastic rounding and the packed saving for backward carry over unchanged,
and a group gives the bits the linear gives for its tokens. Groups are ragged: a group's token count is K
of its weight-gradient GEMM, padded there with zero rows to whole blocks (exact: zero rows add nothing); an
empty group contributes nothing and gets a zero weight gradient. Rows past the last group (the alignment
padding torchtitan's token reorderer adds) come out zero, and so does their input gradient.

Each GEMM slot whose mode allows it (adahop.grouped_mm.ONE_CALL_MODES) runs every group at once instead when
the operands are bf16, with the sizes kept on the device (adahop.grouped_mm: one quantize pass per operand and
one torch._grouped_mm per GEMM, on the same MXFP4 operands); the per-group loop below serves the other slots
(OE modes of y, OE-right of gx), random Hadamard signs and other dtypes, and is the reference the one-call
path is tested against.

The whole grouped forward and backward are two torch custom ops, `adahop::grouped_forward` and
`adahop::grouped_backward`, like the linear's (see linear.py, "The linear's forward and backward as two
torch custom ops"): torch.compile traces an MoE block whole (fullgraph) and runs the same code as eager,
so compiled and eager give the same bits. The group sizes are a tensor argument read on the host inside
the ops (the loop over groups stays there, opaque to the compiler); nothing the compiler sees depends on
them, so the fake implementations give every output a shape computed from the inputs' shapes alone.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from . import grouped_mm
from .amp import autocast_inputs
from .linear import (
    AdaHOPModes,
    LinearRecipe,
    RightOperand,
    _check_dims,
    _empty,
    _gw_row_multiple,
    _keeps_w,
    _keeps_x,
    _pad_rows,
    _x_for_gw,
    forward_gemm,
    prepare_right,
    slot_gemm,
)
from .modes import FULL_PRECISION, HADAMARD, NONE, OE_RIGHT
from .mx import BLOCK_SIZE, MXFP4Tensor

# ----------------------------------------------------------------------------------------------------
# What backward keeps. The forward op returns y and eight tensors, in the order of the linear's op, each
# with a shape that depends on the shapes of x [T, in] and weight [G, out, in] only (never on the group
# sizes, which the compiler does not know); every part a mode does not keep is an empty uint8 tensor:
#   [0:4] the input gradient's right operand W_e^T of every expert, OE-right only: packed codes [G, in, out/2],
#         scales [G, in, out/32], extracted rows [G, k] (indices) and those rows in BF16 [G, k, out]; other
#         modes keep the weight itself (a parameter: no copy), quantized again per group in backward.
#   [4:8] the weight gradient's right operand x_e^T of every group, quantized along its tokens (each group
#         zero-padded to whole blocks on its own), as in the linear: 3.76x smaller than BF16 x. The groups'
#         packed codes [in, K_e/2] and scales [in, K_e/32] lie one after the other, flattened, in two 1-D
#         buffers sized for the most padded tokens any split of T rows into G groups can have
#         (`grouped_mm.token_capacity`; the unused tail stays zero); OE-right adds its extracted rows [G, k]
#         and those rows in BF16 [k, K_e], flattened one group after the other likewise. full_precision keeps
#         x itself instead. Where every group runs in one call (adahop.grouped_mm), the same two buffers hold
#         x^T of the whole token layout, [in, capacity], whose groups start at whole blocks.
#   [8:10] that token layout, where the weight gradient runs in one call and x is quantized: each row's
#         destination [T] (int64) and each padded group's end [G] (int32), so the backward does not compute it
#         again (grouped_mm.token_layout).
# Groups are laid out flat so that each group's part is a contiguous [rows, K_e] view again in backward.
_SAVED = 10


def _saved_buffers(
    x: torch.Tensor, weight: torch.Tensor, r: LinearRecipe, save_gx: bool, save_gw: bool
) -> list[torch.Tensor]:
    """The saved tensors (zeros) in their static shapes: filled by the forward op, returned as they are by its
    fake implementation."""
    tokens, in_f = x.shape
    groups, out_f = weight.shape[0], weight.shape[1]
    parts = [_empty(x) for _ in range(_SAVED)]
    kk = min(r.outlier_k, in_f)  # both right operands have the input features as their rows
    u8 = dict(dtype=torch.uint8)
    if save_gx and not _keeps_w(r):
        parts[0:4] = [
            x.new_zeros((groups, in_f, out_f // 2), **u8),
            x.new_zeros((groups, in_f, out_f // BLOCK_SIZE), **u8),
            x.new_zeros((groups, kk), dtype=torch.int64),
            x.new_zeros((groups, kk, out_f), dtype=torch.bfloat16),
        ]
    if save_gw and not _keeps_x(r):
        cap = grouped_mm.token_capacity(tokens, groups, _gw_row_multiple(r))
        parts[4:6] = [x.new_zeros(in_f * cap // 2, **u8), x.new_zeros(in_f * cap // BLOCK_SIZE, **u8)]
        if r.mode("backward_gw") == OE_RIGHT:
            parts[6:8] = [x.new_zeros((groups, kk), dtype=torch.int64), x.new_zeros(kk * cap, dtype=torch.bfloat16)]
        if grouped_mm.in_one_call(r, "backward_gw", x.dtype, weight.dtype):
            parts[8:10] = [x.new_zeros(tokens, dtype=torch.int64), x.new_zeros(groups, dtype=torch.int32)]
    return parts


def _groups(group_sizes: torch.Tensor, tokens: int) -> list[tuple[int, int, int]]:
    """(group, first row, row count) of every group, from the sizes read on the host (once per op call: a
    device-to-host copy)."""
    counts = grouped_mm.group_counts(group_sizes, tokens)
    starts = [0, *itertools.accumulate(counts)][:-1]
    return list(zip(range(len(counts)), starts, counts))


def _gw_slices(groups: list[tuple[int, int, int]], multiple: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(group, first row, row count, offset, padded count) of every non-empty group, the offset counted in
    padded tokens along the flat weight-gradient buffers."""
    offset = 0
    for g, start, count in groups:
        if count:
            padded = -(-count // multiple) * multiple
            yield g, start, count, offset, padded
            offset += padded


@torch.library.custom_op("adahop::grouped_forward", mutates_args=())
def grouped_forward(
    x: torch.Tensor, weight: torch.Tensor, group_sizes: torch.Tensor, recipe: str, save_gx: bool, save_gw: bool
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """y [T, out] of x [T, in] (tokens sorted by group) and weight [G, out, in] under `recipe`
    (LinearRecipe.key), group e taking group_sizes[e] rows; and what backward keeps (see above) for the
    input gradient (`save_gx`) and the weight gradient (`save_gw`)."""
    r = LinearRecipe.from_key(recipe)
    tokens, in_f = x.shape
    if tokens == 0 or weight.shape[0] == 0:  # no token or no group: nothing to multiply (shapes only, no sync)
        return (x.new_zeros(tokens, weight.shape[1]), *_saved_buffers(x, weight, r, save_gx, save_gw))
    one_call = {slot: grouped_mm.in_one_call(r, slot, x.dtype, weight.dtype) for slot in ("forward_y", "backward_gw")}
    host_groups = _HostGroups(group_sizes, tokens)  # read on the host only if a slot loops over the groups
    if one_call["forward_y"] or one_call["backward_gw"]:
        sizes = grouped_mm.checked_sizes(group_sizes, tokens)  # once for both one-call functions
    if one_call["forward_y"]:
        y = grouped_mm.forward_y(x, weight, sizes, r)
    else:
        y = x.new_zeros(tokens, weight.shape[1])
        for g, start, count in host_groups():
            if count:
                y[start : start + count] = forward_gemm(x[start : start + count], weight[g], r)
    gw_in_one_call = save_gw and not _keeps_x(r) and one_call["backward_gw"]
    # saved_x's own tensors take the weight gradient's places in one call: no zero buffers for them
    saved = _saved_buffers(x, weight, r, save_gx, save_gw and not gw_in_one_call)
    if save_gx and not _keeps_w(r):
        for g in range(weight.shape[0]):
            right = prepare_right(weight[g], 0, OE_RIGHT, r, "backward_gx", for_saving=True)
            for part, value in zip(saved[0:4], (right.packed.data, right.packed.scales, right.rows, right.extracted)):
                part[g] = value
    if gw_in_one_call:
        kept, layout = grouped_mm.saved_x(x, sizes, r)
        saved[4 : 4 + len(kept)] = kept
        saved[8:10] = layout
    elif save_gw and not _keeps_x(r):
        kk = saved[6].shape[-1]
        for g, start, count, off, padded in _gw_slices(host_groups(), _gw_row_multiple(r)):
            right = _x_for_gw(x[start : start + count], r)
            codes, scales = right.packed.data.reshape(-1), right.packed.scales.reshape(-1)
            saved[4][in_f * off // 2 : in_f * (off + padded) // 2] = codes
            saved[5][in_f * off // BLOCK_SIZE : in_f * (off + padded) // BLOCK_SIZE] = scales
            if right.rows is not None:
                saved[6][g] = right.rows
                saved[7][kk * off : kk * (off + padded)] = right.extracted.reshape(-1)
    return (y, *saved)


class _HostGroups:
    """The groups as (group, first row, row count), read from the sizes on the host at the first call (one
    device-to-host copy, and the sizes refused by name if invalid), for the slots that loop over them."""

    def __init__(self, sizes: torch.Tensor, tokens: int):
        self.sizes, self.tokens, self.groups = sizes, tokens, None

    def __call__(self) -> list[tuple[int, int, int]]:
        if self.groups is None:
            self.groups = _groups(self.sizes, self.tokens)
        return self.groups


@grouped_forward.register_fake
def _(x, weight, group_sizes, recipe, save_gx, save_gw):
    r = LinearRecipe.from_key(recipe)
    return (x.new_empty((x.shape[0], weight.shape[1])), *_saved_buffers(x, weight, r, save_gx, save_gw))


@torch.library.custom_op("adahop::grouped_backward", mutates_args=())
def grouped_backward(
    gy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    group_sizes: torch.Tensor,
    saved: list[torch.Tensor],
    recipe: str,
    need_gx: bool,
    need_gw: bool,
    in_features: int,
    x_dtype: torch.dtype,
    w_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gx [T, in], gw [G, out, in]) from the output gradient gy [T, out] and what grouped_forward kept (`x` /
    `weight` empty where the recipe does not keep them); an empty tensor for a gradient not asked for."""
    # the reference GEMMs in float32 even where backward is called under autocast (eager backward would inherit
    # it, a compiled one does not): the same bits either way
    with torch.autocast(gy.device.type, enabled=False):
        return _grouped_backward(
            gy,
            x,
            weight,
            group_sizes,
            saved,
            LinearRecipe.from_key(recipe),
            need_gx,
            need_gw,
            in_features,
            x_dtype,
            w_dtype,
        )


def _grouped_backward(
    gy, x, weight, group_sizes, saved, r, need_gx, need_gw, in_features, x_dtype, w_dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    rounding = r.grad_rounding
    tokens, out_f = gy.shape
    if tokens == 0 or group_sizes.shape[0] == 0:
        gx = gy.new_zeros((tokens, in_features), dtype=x_dtype) if need_gx else _empty(gy, x_dtype)
        gw = gy.new_zeros((group_sizes.shape[0], out_f, in_features), dtype=w_dtype) if need_gw else _empty(gy, w_dtype)
        return gx, gw
    host_groups = _HostGroups(group_sizes, tokens)
    gx = gw = None
    one_call = {slot: grouped_mm.in_one_call(r, slot, x_dtype, w_dtype) for slot in ("backward_gx", "backward_gw")}
    if any(one_call.values()):  # the sizes the one-call slots take (the forward counted invalid ones)
        sizes = grouped_mm.in_range(group_sizes, tokens)
    if need_gx and one_call["backward_gx"]:
        gx = grouped_mm.input_gradient(gy, weight, sizes, r)
    elif need_gx:
        gx = gy.new_zeros((tokens, in_features), dtype=x_dtype)
        mode = r.mode("backward_gx")
        for g, start, count in host_groups():
            if not count:
                continue
            if mode == OE_RIGHT:
                right = RightOperand(
                    packed=MXFP4Tensor(saved[0][g], saved[1][g], axis=-1, dtype=w_dtype),
                    rows=saved[2][g],
                    extracted=saved[3][g],
                )
            elif mode in (HADAMARD, NONE):
                right = prepare_right(weight[g], 0, mode, r, "backward_gx", for_saving=False)
            else:
                right = RightOperand(full=weight[g], full_k_dim=0)
            gx[start : start + count] = slot_gemm(
                gy[start : start + count], 1, right, mode, r, "backward_gx", rounding, x_dtype
            )
    if need_gw and one_call["backward_gw"]:
        layout = None if _keeps_x(r) else saved[8:10]  # what saved_x kept, where the forward ran it
        gw = grouped_mm.weight_gradient(gy, x, sizes, saved[4:8], r, in_features, layout)
    elif need_gw:
        gw = gy.new_zeros((group_sizes.shape[0], out_f, in_features), dtype=w_dtype)
        mode = r.mode("backward_gw")
        multiple = _gw_row_multiple(r)
        kk = saved[6].shape[-1]
        for g, start, count, off, padded in _gw_slices(host_groups(), multiple):
            if mode == FULL_PRECISION:
                right = RightOperand(full=_pad_rows(x[start : start + count], multiple), full_k_dim=0)
            else:
                data = saved[4][in_features * off // 2 : in_features * (off + padded) // 2]
                scales = saved[5][in_features * off // BLOCK_SIZE : in_features * (off + padded) // BLOCK_SIZE]
                packed = MXFP4Tensor(
                    data.view(in_features, padded // 2),
                    scales.view(in_features, padded // BLOCK_SIZE),
                    axis=-1,
                    dtype=x_dtype,
                )
                right = RightOperand(packed=packed)
                if mode == OE_RIGHT:
                    right.rows, right.extracted = saved[6][g], saved[7][kk * off : kk * (off + padded)].view(kk, padded)
            gw[g] = slot_gemm(
                _pad_rows(gy[start : start + count], multiple), 0, right, mode, r, "backward_gw", rounding, w_dtype
            )
    return (gx if gx is not None else _empty(gy, x_dtype)), (gw if gw is not None else _empty(gy, w_dtype))


@grouped_backward.register_fake
def _(gy, x, weight, group_sizes, saved, recipe, need_gx, need_gw, in_features, x_dtype, w_dtype):
    gx = gy.new_empty((gy.shape[0], in_features), dtype=x_dtype) if need_gx else _empty(gy, x_dtype)
    gw = (
        gy.new_empty((group_sizes.shape[0], gy.shape[1], in_features), dtype=w_dtype)
        if need_gw
        else _empty(gy, w_dtype)
    )
    return gx, gw


def _setup_context(ctx, inputs, output) -> None:
    x, weight, group_sizes, recipe, save_gx, save_gw = inputs
    r = LinearRecipe.from_key(recipe)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero tensor for each saved form's (absent) gradient, as adahop.linear
    ctx.save_for_backward(
        x if save_gw and _keeps_x(r) else None, weight if save_gx and _keeps_w(r) else None, group_sizes, *output[1:]
    )
    ctx.recipe, ctx.save_gx, ctx.save_gw = recipe, save_gx, save_gw
    ctx.in_features, ctx.x_dtype, ctx.w_dtype = x.shape[1], x.dtype, weight.dtype


def _backward(ctx, gy, *unused):
    x, weight, group_sizes, *saved = ctx.saved_tensors
    need_gx, need_gw = ctx.needs_input_grad[0] and ctx.save_gx, ctx.needs_input_grad[1] and ctx.save_gw
    gx, gw = grouped_backward(
        gy,
        x if x is not None else _empty(gy, ctx.x_dtype),
        weight if weight is not None else _empty(gy, ctx.w_dtype),
        group_sizes,
        saved,
        ctx.recipe,
        need_gx,
        need_gw,
        ctx.in_features,
        ctx.x_dtype,
        ctx.w_dtype,
    )
    return gx if need_gx else None, gw if need_gw else None, None, None, None, None


grouped_forward.register_autograd(_backward, setup_context=_setup_context)


def mxfp4_grouped_mm(
    x: torch.Tensor, weight: torch.Tensor, num_tokens_per_group: torch.Tensor | list[int], recipe: LinearRecipe
) -> torch.Tensor:
    """x [T, in] (tokens sorted by group), weight [G, out, in] -> [T, out] under `recipe`'s modes.

    `num_tokens_per_group`: G sizes (a tensor on any device, or a list) summing to at most T; the rows past
    them come out zero."""
    if x.dim() != 2 or weight.dim() != 3 or x.shape[1] != weight.shape[2]:
        raise ValueError(f"expected x [T, in] and weight [G, out, in], got {tuple(x.shape)} and {tuple(weight.shape)}")
    sizes = num_tokens_per_group
    if not torch.is_tensor(sizes):
        sizes = torch.tensor(list(sizes), dtype=torch.int64, device=x.device)
    if sizes.dim() != 1 or sizes.shape[0] != weight.shape[0]:
        raise ValueError(f"{sizes.numel()} group sizes given for {weight.shape[0]} weight groups")
    if sizes.is_floating_point() or sizes.is_complex():
        raise ValueError(f"group sizes must be integers, got dtype {sizes.dtype}: pass token counts (e.g. int64)")
    sizes = sizes.to(x.device)  # the one-call path keeps them beside x (a copy if they came on another device)
    _check_dims(weight.shape[2], weight.shape[1], recipe)
    (x, weight), amp_off = autocast_inputs(x, weight)  # the dtype F.linear would compute in
    grad = torch.is_grad_enabled()
    with amp_off:  # validation / inference (no gradient wanted) quantizes nothing for backward
        return grouped_forward(x, weight, sizes, recipe.key, grad and x.requires_grad, grad and weight.requires_grad)[0]


class MXFP4GroupedMM(AdaHOPModes, nn.Module):
    """The AdaHOP state of one grouped weight (e.g. an expert stack w1): recipe, modes, observer.

    Holds no parameters: the weight stays on the experts module, so its FQN and FSDP sharding do not
    change. Calibration treats it like an AdaHOPLinear: x is the routed tokens of all groups, W the
    whole stack flattened to [G * out, in], g the gradient of the routed outputs.
    """

    def __init__(self, recipe: LinearRecipe):
        super().__init__()
        self.recipe = recipe
        self.observer: Optional[Callable[[str, torch.Tensor], None]] = None

    def forward(self, x: torch.Tensor, weight: torch.Tensor, num_tokens_per_group) -> torch.Tensor:
        # observers see eager steps only, as AdaHOPLinear's: the trainer runs the steps that need them eagerly
        # (adahop.train), a compiled graph leaves them out
        observe = self.observer is not None and not torch.compiler.is_compiling()
        if observe:
            self.observer("x", x.detach())
            self.observer("w", weight.detach().reshape(-1, weight.shape[-1]))
        y = mxfp4_grouped_mm(x, weight, num_tokens_per_group, self.recipe)
        if observe and y.requires_grad:
            observer = self.observer

            def observe_grad(g: torch.Tensor) -> None:
                observer("g", g.detach())

            y.register_hook(observe_grad)
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.modes.items())
