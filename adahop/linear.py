"""The AdaHOP MXFP4 linear: two torch custom ops running its three GEMMs per mode, and its module.

Data flow of one GEMM slot (see adahop.modes for the operands of each slot):
    A, Bt (K-major) -> [extract outlier rows] -> [Hadamard along K] -> MXFP4 along K -> GEMM -> out
                                  \\-> BF16 GEMM of the extracted rows --------------------> added

What backward keeps: x, the right operand of the weight-gradient GEMM, is saved already transformed
and quantized along its backward K (packed E2M1 + E8M0, 3.76x smaller than BF16), except where the
mode needs it at high precision (full_precision; OE-right keeps its k extracted columns in BF16).
W, the right operand of the input-gradient GEMM, is a parameter that exists anyway (FSDP gathers it
again for backward): it is kept by reference, like nn.Linear does, and quantized along its backward K
in backward, so no copy of it is added to what the step holds. Only OE-right for gx saves a packed
copy (its extracted columns are chosen once, in forward).

backward_gw with inner_outlier_extract_left runs `hadamard`. OE-left there would extract rows of
g^T (output channels) and multiply them by the whole x in BF16, so x would have to be kept in BF16
for backward: that gives back the memory MXFP4 saves on the largest saved activation. The reference
code of the method makes the same choice. OE-right (columns of x, i.e. input channels) is honoured:
only the k extracted columns are kept in BF16.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import backend, x_operands
from .amp import autocast_inputs
from .hadamard import check_hadamard_size
from .modes import FULL_PRECISION, HADAMARD, NONE, OE_LEFT, OE_RIGHT, SLOTS, check_mode
from .mx import BLOCK_SIZE, MXFP4Tensor
from .outliers import DEFAULT_OUTLIER_K, check_outlier_k, top_rows

try:  # tensor-parallel operands (torch built without distributed has none)
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:
    _DTensor = None

# The mode backward_gw actually runs for each configured mode (see the module docstring).
GW_EFFECTIVE_MODE = {OE_LEFT: HADAMARD}


@dataclass(frozen=True)
class LinearRecipe:
    """Everything that decides the numerics of one AdaHOP linear."""

    forward_y: str = HADAMARD
    backward_gx: str = HADAMARD
    backward_gw: str = HADAMARD
    use_sr_grad: bool = False
    randomized_hadamard: bool = False
    hadamard_size: int = 32
    outlier_k: int = DEFAULT_OUTLIER_K
    hadamard_seed: int = 0
    tile_b: str = "none"  # backend.TILE_B_CHOICES: GEMMs whose right operand takes 128x128 fp8 scales

    def __post_init__(self):
        for slot in SLOTS:
            check_mode(getattr(self, slot), slot)
        check_hadamard_size(self.hadamard_size)
        check_outlier_k(self.outlier_k)
        backend.tile_b_slot(self.tile_b, None)  # refuses a value it does not know
        # The recipe as the custom ops take it: a string, which torch.compile traces as a constant, so each
        # distinct key is a graph of its own. The signs' seed only matters with random signs: left out
        # otherwise, so that layers of the same modes share their compiled graph.
        fields = dataclasses.asdict(self)
        if not self.randomized_hadamard:
            fields["hadamard_seed"] = 0
        object.__setattr__(self, "key", json.dumps(fields, sort_keys=True))
        # computed here: a compiled forward reads them, and the compiler does not trace zlib
        object.__setattr__(self, "slot_seeds", {slot: _slot_seed(self.hadamard_seed, slot) for slot in SLOTS})

    @staticmethod
    @lru_cache(maxsize=None)
    def from_key(key: str) -> "LinearRecipe":
        return LinearRecipe(**json.loads(key))

    def mode(self, slot: str) -> str:
        mode = getattr(self, slot)
        return GW_EFFECTIVE_MODE.get(mode, mode) if slot == "backward_gw" else mode

    def tile_b_for(self, slot: str) -> bool:
        return backend.tile_b_slot(self.tile_b, slot)

    def hadamard_size_for(self, slot: str) -> int | None:
        return self.hadamard_size if self.mode(slot) in (HADAMARD, OE_LEFT, OE_RIGHT) else None

    def signs_seed(self, slot: str) -> int:
        """The seed of `slot`'s random Hadamard signs, -1 where it has none."""
        if not self.randomized_hadamard or self.hadamard_size_for(slot) is None:
            return -1
        return self.slot_seeds[slot]

    @property
    def grad_rounding(self) -> str:
        """The rounding of the backward GEMMs' quantizations: stochastic with use_sr_grad, else nearest."""
        return "stochastic" if self.use_sr_grad else "nearest"

    def signs_for(self, slot: str, k: int, device) -> torch.Tensor | None:
        return x_operands.signs(k, self.signs_seed(slot), device)


def _slot_seed(seed: int, slot: str) -> int:
    return zlib.crc32(f"{seed}:{slot}".encode())


@dataclass
class RightOperand:
    """The right operand Bt of a slot, ready for the GEMM or for saving (K-major, [N, K])."""

    packed: Optional[MXFP4Tensor] = None  # quantized Bt (extracted rows zeroed)
    operand: Optional[backend.Operand] = None  # the same, in the form the GEMM eats
    rows: Optional[torch.Tensor] = None  # OE-right: indices of the extracted rows of Bt
    extracted: Optional[torch.Tensor] = None  # OE-right: those rows in BF16, [k, K]
    full: Optional[torch.Tensor] = None  # high-precision operand as stored (full_precision, OE-left)
    full_k_dim: int = 1

    def gemm_operand(self) -> backend.Operand:
        return self.operand if self.operand is not None else backend.from_packed(self.packed)

    def full_k_major(self) -> torch.Tensor:
        return backend.to_k_major(self.full, self.full_k_dim)


def prepare_right(
    bt: torch.Tensor, k_dim: int, mode: str, recipe: LinearRecipe, slot: str, *, for_saving: bool
) -> RightOperand:
    """Quantize/extract the right operand of `slot` once (in forward, also for backward)."""
    if mode in (FULL_PRECISION, OE_LEFT):
        return RightOperand(full=bt, full_k_dim=k_dim)
    k = bt.shape[k_dim]
    hsize = recipe.hadamard_size_for(slot)
    signs = recipe.signs_for(slot, k, bt.device)
    rows = extracted = None
    if mode == OE_RIGHT:
        k_major = backend.to_k_major(bt, k_dim)
        rows = top_rows(k_major, recipe.outlier_k)
        extracted = k_major.index_select(0, rows).to(torch.bfloat16)
    operand, packed = backend.quantize(
        bt, k_dim=k_dim, hadamard_size=hsize, signs=signs, zero_rows=rows, packed=for_saving
    )
    if for_saving:
        operand = None  # keep only the packed bytes alive until backward
    return RightOperand(packed=packed, operand=operand, rows=rows, extracted=extracted)


# Slots whose left operand may hold rows the fp8 form cannot (blocks more than 28 exponents apart in a
# 128-group): the GEMM recomputes them exactly without a host sync. Measured on the 100M model
# (scripts/gpu.sh deficient, docs/kernels.md): only g of the input gradient, along the output features.
ROW_FIX_SLOTS = ("backward_gx",)


def slot_gemm(
    a: torch.Tensor,
    a_k_dim: int,
    right: RightOperand,
    mode: str,
    recipe: LinearRecipe,
    slot: str,
    rounding: str,
    out_dtype: torch.dtype = torch.float32,
    a_operand: Optional[backend.Operand] = None,
) -> torch.Tensor:
    """out = A @ B for one slot, rounded once to `out_dtype`. `a` is the high-precision left operand as stored;
    `a_operand` its quantized form where the caller has it already (modes that quantize all of `a`).

    The extracted rows/columns of OE modes are exact zeros in the MXFP4 GEMM, so adding their BF16 part
    after the rounding to `out_dtype` is the same single rounding."""
    if mode == FULL_PRECISION:
        return backend.bf16_matmul(backend.to_k_major(a, a_k_dim), right.full_k_major(), out_dtype=out_dtype)
    left_rows = None
    if mode == OE_LEFT:
        left_rows = top_rows(backend.to_k_major(a, a_k_dim), recipe.outlier_k)
        bt_hp = right.full_k_major()
        signs = recipe.signs_for(slot, a.shape[a_k_dim], a.device)
        right_operand, _ = backend.quantize(bt_hp, hadamard_size=recipe.hadamard_size_for(slot), signs=signs)
    else:
        right_operand = right.gemm_operand()
    if a_operand is None or left_rows is not None:
        a_operand = quantize_left(a, a_k_dim, recipe, slot, rounding, zero_rows=left_rows)
    out = backend.matmul(
        a_operand, right_operand, out_dtype, tag=slot, fix_rows=slot in ROW_FIX_SLOTS, tile_b=recipe.tile_b_for(slot)
    )
    # in place: `out` is this function's own fresh tensor, and a copy would be as large as the output
    if mode == OE_LEFT:
        a_rows = backend.to_k_major(a, a_k_dim).index_select(0, left_rows)
        out.index_add_(0, left_rows, backend.bf16_matmul(a_rows, bt_hp, out_dtype=out_dtype))
    elif mode == OE_RIGHT:
        part = backend.bf16_matmul(backend.to_k_major(a, a_k_dim), right.extracted, out_dtype=out_dtype)
        out.index_add_(1, right.rows, part)
    return out


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-t.shape[0]) % multiple
    return t if pad == 0 else torch.cat((t, t.new_zeros(pad, *t.shape[1:])), dim=0)


def _check_dims(in_features: int, out_features: int, recipe: LinearRecipe) -> None:
    for name, dim in (("in_features", in_features), ("out_features", out_features)):
        if dim % BLOCK_SIZE != 0:
            raise ValueError(f"MXFP4 linear needs {name} to be a multiple of {BLOCK_SIZE}, got {dim}")
        if dim % recipe.hadamard_size != 0:
            raise ValueError(f"{name}={dim} is not a multiple of hadamard_size={recipe.hadamard_size}")


def forward_gemm(
    x2d: torch.Tensor, weight: torch.Tensor, recipe: LinearRecipe, x_left: Optional[backend.Operand] = None
) -> torch.Tensor:
    """The forward GEMM y = x W^T of `recipe` (no autograd bookkeeping); `x_left`: x already quantized as its
    left operand (adahop.x_operands), else quantized here."""
    mode = recipe.mode("forward_y")
    w_right = prepare_right(weight, 1, mode, recipe, "forward_y", for_saving=False)
    return slot_gemm(x2d, 1, w_right, mode, recipe, "forward_y", "nearest", x2d.dtype, a_operand=x_left)


def quantize_left(
    a: torch.Tensor,
    a_k_dim: int,
    recipe: LinearRecipe,
    slot: str,
    rounding: str,
    zero_rows: Optional[torch.Tensor] = None,
) -> backend.Operand:
    """The left operand of a quantized slot (`zero_rows`: the rows OE-left takes out)."""
    return quantize_for_slot(a, a_k_dim, recipe, slot, rounding, zero_rows)[0]


def quantize_for_slot(
    t: torch.Tensor,
    k_dim: int,
    recipe: LinearRecipe,
    slot: str,
    rounding: str = "nearest",
    zero_rows: Optional[torch.Tensor] = None,
    packed: bool = False,
) -> tuple[backend.Operand, Optional[MXFP4Tensor]]:
    """backend.quantize of `t` along `k_dim` with `slot`'s Hadamard and signs (see backend.quantize)."""
    return backend.quantize(
        t,
        k_dim=k_dim,
        hadamard_size=recipe.hadamard_size_for(slot),
        signs=recipe.signs_for(slot, t.shape[k_dim], t.device),
        rounding=rounding,
        zero_rows=zero_rows,
        packed=packed,
    )


def _x_for_gw(x2d: torch.Tensor, recipe: LinearRecipe) -> RightOperand:
    """x as the right operand of the weight gradient (K = tokens, zero-padded), kept for backward."""
    x_padded = _pad_rows(x2d, _gw_row_multiple(recipe))
    return prepare_right(x_padded, 0, recipe.mode("backward_gw"), recipe, "backward_gw", for_saving=True)


def _gw_row_multiple(recipe: LinearRecipe) -> int:
    # The token axis is K of the weight-gradient GEMM: zero rows pad it to whole MX / Hadamard blocks,
    # which adds nothing to g^T x.
    return max(BLOCK_SIZE, recipe.hadamard_size)


# ----------------------------------------------------------------------------------------------------
# The linear's forward and backward as two torch custom ops, so that torch.compile traces a converted model
# whole (fullgraph): each op is opaque to the compiler, its fake implementation gives the shapes. The
# forward op returns y and what backward keeps of the modes' operands, in a fixed order of eight tensors
# (empty where a mode keeps nothing there):
#   [0:4] the input gradient's right operand W^T, for OE-right only: packed codes, scales, extracted rows
#         (indices) and those rows in BF16; other modes keep W itself (the parameter, no copy);
#   [4:8] the weight gradient's right operand x^T (tokens zero-padded): the same four, the last two for
#         OE-right only; full_precision keeps x itself instead.
# Every part a mode does not keep is an empty uint8 tensor.
_SAVED = 8


def _empty(like: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    return like.new_empty(0, dtype=dtype)


def _keeps_x(recipe: LinearRecipe) -> bool:
    """Backward needs x itself (the weight gradient's right operand in BF16)."""
    return recipe.mode("backward_gw") == FULL_PRECISION


def _keeps_w(recipe: LinearRecipe) -> bool:
    """Backward needs W itself (every input-gradient mode but OE-right, which keeps its own packed copy)."""
    return recipe.mode("backward_gx") != OE_RIGHT


def _right_parts(right: Optional[RightOperand], like: torch.Tensor) -> list[torch.Tensor]:
    if right is None:  # four distinct tensors: a custom op's outputs may not alias each other
        return [_empty(like) for _ in range(4)]
    return [
        right.packed.data,
        right.packed.scales,
        right.rows if right.rows is not None else _empty(like),
        right.extracted if right.extracted is not None else _empty(like),
    ]


@torch.library.custom_op("adahop::linear_forward", mutates_args=())
def linear_forward(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    recipe: str,
    save_gx: bool,
    save_gw: bool,
    x_left: list[torch.Tensor],
    x_saved: list[torch.Tensor],
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
]:
    """y = x2d @ weight^T under `recipe` (LinearRecipe.key), and what backward keeps (see above) for the
    input gradient (`save_gx`) and the weight gradient (`save_gw`). `x_left` / `x_saved`: x's quantized forms
    from adahop.x_operands where the caller made them (see _shared_x_forms), else empty and made here; the
    weight gradient's parts of the output are then empty (backward keeps `x_saved`)."""
    r = LinearRecipe.from_key(recipe)
    if x_left and r.mode("forward_y") not in X_LEFT_MODES:
        raise ValueError(f"x_left given for forward_y={r.forward_y}, which quantizes x itself")
    if x_saved and not (save_gw and r.mode("backward_gw") in X_SAVED_MODES):
        raise ValueError(f"x_saved given with save_gw={save_gw}, backward_gw={r.backward_gw}: nothing to keep it for")
    left = None
    if x_left:
        hsize = r.hadamard_size_for("forward_y") or 0
        left = x_operands.left_operand(list(x_left), x2d, hsize, r.signs_seed("forward_y"))
    y = forward_gemm(x2d, weight, r, left)
    gx_right = gw_right = None
    if save_gx and not _keeps_w(r):
        gx_right = prepare_right(weight, 0, OE_RIGHT, r, "backward_gx", for_saving=True)
    if save_gw and not _keeps_x(r) and not x_saved:
        gw_right = _x_for_gw(x2d, r)
    return (y, *_right_parts(gx_right, x2d), *_right_parts(gw_right, x2d))


@linear_forward.register_fake
def _(x2d, weight, recipe, save_gx, save_gw, x_left, x_saved):
    r = LinearRecipe.from_key(recipe)
    tokens, k = x2d.shape
    n = weight.shape[0]
    parts = [_empty(x2d) for _ in range(_SAVED)]

    def kept(rows: int, k_inner, oe_right: bool) -> list:
        u8 = (
            x2d.new_empty((rows, k_inner // 2), dtype=torch.uint8),
            x2d.new_empty((rows, k_inner // 32), dtype=torch.uint8),
        )
        if not oe_right:
            return [*u8, _empty(x2d), _empty(x2d)]
        kk = min(r.outlier_k, rows)
        return [*u8, x2d.new_empty(kk, dtype=torch.int64), x2d.new_empty((kk, k_inner), dtype=torch.bfloat16)]

    if save_gx and not _keeps_w(r):
        parts[0:4] = kept(k, n, True)
    if save_gw and not _keeps_x(r) and not x_saved:
        multiple = _gw_row_multiple(r)
        parts[4:8] = kept(k, x_operands.padded_rows(tokens, multiple), r.mode("backward_gw") == OE_RIGHT)
    return (x2d.new_empty((tokens, n)), *parts)


@torch.library.custom_op("adahop::linear_backward", mutates_args=())
def linear_backward(
    gy: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    saved: list[torch.Tensor],
    recipe: str,
    need_gx: bool,
    need_gw: bool,
    in_features: int,
    x_dtype: torch.dtype,
    w_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gx, gw) of the linear from the output gradient gy [T, N] and what linear_forward kept (`x2d` / `weight`
    empty where the recipe does not keep them); an empty tensor for a gradient not asked for."""
    # autocast off, as in forward (adahop/amp.py): an eager backward inside an autocast region would inherit it,
    # a compiled one does not
    with torch.autocast(gy.device.type, enabled=False):
        return _linear_backward(
            gy, x2d, weight, saved, LinearRecipe.from_key(recipe), need_gx, need_gw, x_dtype, w_dtype
        )


def _linear_backward(gy, x2d, weight, saved, r: LinearRecipe, need_gx, need_gw, x_dtype, w_dtype):
    rounding = r.grad_rounding
    gx = gw = _empty(gy, x_dtype)
    if need_gx:
        mode = r.mode("backward_gx")
        if mode == OE_RIGHT:
            right = _right_operand(saved[0:4], w_dtype, oe_right=True)
        elif mode in (HADAMARD, NONE):
            right = prepare_right(weight, 0, mode, r, "backward_gx", for_saving=False)
        else:
            right = RightOperand(full=weight, full_k_dim=0)
        gx = slot_gemm(gy, 1, right, mode, r, "backward_gx", rounding, x_dtype)
    if need_gw:
        mode = r.mode("backward_gw")
        multiple = _gw_row_multiple(r)
        if mode == FULL_PRECISION:
            right = RightOperand(full=_pad_rows(x2d, multiple), full_k_dim=0)
        else:
            right = _right_operand(saved[4:8], x_dtype, oe_right=mode == OE_RIGHT)
        gw = slot_gemm(_pad_rows(gy, multiple), 0, right, mode, r, "backward_gw", rounding, w_dtype)
    return gx, gw


@linear_backward.register_fake
def _(gy, x2d, weight, saved, recipe, need_gx, need_gw, in_features, x_dtype, w_dtype):
    gx = gy.new_empty((gy.shape[0], in_features), dtype=x_dtype) if need_gx else _empty(gy, x_dtype)
    gw = gy.new_empty((gy.shape[1], in_features), dtype=w_dtype) if need_gw else _empty(gy, x_dtype)
    return gx, gw


def _right_operand(parts: list[torch.Tensor], dtype: torch.dtype, oe_right: bool) -> RightOperand:
    packed = MXFP4Tensor(parts[0], parts[1], axis=-1, dtype=dtype)
    return RightOperand(packed=packed, rows=parts[2] if oe_right else None, extracted=parts[3] if oe_right else None)


def _setup_context(ctx, inputs, output) -> None:
    x2d, weight, recipe, save_gx, save_gw, _, x_saved = inputs
    r = LinearRecipe.from_key(recipe)
    ctx.mark_non_differentiable(*output[1:])
    # the saved forms get no gradient: without this autograd would hand backward a zero tensor of each (an
    # allocation and a fill apiece, as large as the forms)
    ctx.set_materialize_grads(False)
    saved = list(output[1:])
    if x_saved:  # x^T made outside the op (adahop.x_operands): kept as given, shared by the linears of one x
        saved[4:6] = x_saved
    ctx.save_for_backward(x2d if save_gw and _keeps_x(r) else None, weight if save_gx and _keeps_w(r) else None, *saved)
    ctx.recipe, ctx.save_gx, ctx.save_gw = recipe, save_gx, save_gw
    ctx.n_left, ctx.n_saved = len(inputs[5]), len(x_saved)  # autograd wants a gradient list per input list
    ctx.in_features, ctx.x_dtype, ctx.w_dtype = x2d.shape[1], x2d.dtype, weight.dtype


def _backward(ctx, gy, *unused):
    x2d, weight, *saved = ctx.saved_tensors
    need_gx, need_gw = ctx.needs_input_grad[0] and ctx.save_gx, ctx.needs_input_grad[1] and ctx.save_gw
    gx, gw = linear_backward(
        gy,
        x2d if x2d is not None else _empty(gy, ctx.x_dtype),
        weight if weight is not None else _empty(gy, ctx.w_dtype),
        saved,
        ctx.recipe,
        need_gx,
        need_gw,
        ctx.in_features,
        ctx.x_dtype,
        ctx.w_dtype,
    )
    return gx if need_gx else None, gw if need_gw else None, None, None, None, [None] * ctx.n_left, [None] * ctx.n_saved


linear_forward.register_autograd(_backward, setup_context=_setup_context)


def mxfp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    forward_y: str = HADAMARD,
    backward_gx: str = HADAMARD,
    backward_gw: str = HADAMARD,
    use_sr_grad: bool = False,
    randomized_hadamard: bool = False,
    hadamard_size: int = 32,
    outlier_k: int = DEFAULT_OUTLIER_K,
    hadamard_seed: int = 0,
    tile_b: str = "none",
) -> torch.Tensor:
    """y = x @ weight^T with every GEMM (forward and both backward) in MXFP4 under the given modes.

    x: [..., in], weight: [out, in]; in and out multiples of 32 (and of hadamard_size). `tile_b` only
    changes how the GPU fast path scales its fp8 operands (adahop.backend.TILE_B_CHOICES), not the result.
    """
    recipe = LinearRecipe(
        forward_y,
        backward_gx,
        backward_gw,
        use_sr_grad,
        randomized_hadamard,
        hadamard_size,
        outlier_k,
        hadamard_seed,
        tile_b,
    )
    return _apply(x, weight, recipe)


def _apply(x: torch.Tensor, weight: torch.Tensor, recipe: LinearRecipe) -> torch.Tensor:
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x [..., {weight.shape[-1]}] expected for weight {tuple(weight.shape)}, got {tuple(x.shape)}")
    _check_dims(weight.shape[1], weight.shape[0], recipe)
    (x, weight), amp_off = autocast_inputs(x, weight)  # the dtype F.linear would compute in
    x2d = x.reshape(-1, x.shape[-1])
    grad = torch.is_grad_enabled()
    save_gx, save_gw = grad and x.requires_grad, grad and weight.requires_grad
    with amp_off:  # validation / inference (no gradient wanted) quantizes nothing for backward
        x_left, x_saved = _shared_x_forms(x2d, recipe, save_gw)
        y2d = linear_forward(x2d, weight, recipe.key, save_gx, save_gw, x_left, x_saved)[0]
    return y2d.reshape(*x.shape[:-1], weight.shape[0])


# The modes whose GEMM quantizes all of x as it is (OE-right takes rows of W out, not of x), so its forms can come
# from adahop.x_operands: as the forward GEMM's left operand, and as the weight gradient's saved right operand.
X_LEFT_MODES = (HADAMARD, NONE, OE_RIGHT)
X_SAVED_MODES = (HADAMARD, NONE)


def _shared_x_forms(
    x2d: torch.Tensor, recipe: LinearRecipe, save_gw: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """x's quantized forms (forward left operand; x^T kept for the weight gradient) from their own ops, for the
    modes that quantize all of x: a compiled graph computes each once for the linears that share x and their
    settings (adahop.x_operands). Empty where the mode makes its own (OE, full precision)."""
    x_left, x_saved = [], []
    xd = x2d.detach()
    if recipe.mode("forward_y") in X_LEFT_MODES:
        hsize = recipe.hadamard_size_for("forward_y") or 0
        fast = x_operands.left_is_fast(xd, hsize)
        x_left = list(x_operands.quantize_left_operand(xd, hsize, recipe.signs_seed("forward_y"), fast))
    if save_gw and recipe.mode("backward_gw") in X_SAVED_MODES:
        hsize = recipe.hadamard_size_for("backward_gw") or 0
        seed = recipe.signs_seed("backward_gw")
        x_saved = list(x_operands.quantize_saved_operand(xd, _gw_row_multiple(recipe), hsize, seed))
    return x_left, x_saved


# ----------------------------------------------------------------------------------------------------
# Tensor parallelism: torchtitan's ColwiseParallel / RowwiseParallel hand the layer DTensors (weight Shard(0) or
# Shard(1) on a 1-D TP mesh, x Replicate or Shard(-1)). The custom ops know plain tensors only, so the layer runs
# them on the local shards and wraps the result in the placements nn.Linear's F.linear would give, with the
# gradient placements of the same math (as torchao's float8 TP styles do with to_local / from_local).


def _is_dtensor(t) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def tp_multiple(hadamard_size: int, fast: bool) -> int:
    """What a sharded dim of a converted linear must be a multiple of on each rank: whole MX blocks and whole
    Hadamard blocks on every shard, so that each shard quantizes exactly the blocks the unsharded layer does;
    128 where the GPU fast path runs (its fp8 groups: a shard of another size would fall back to the
    reference path)."""
    return max(BLOCK_SIZE, hadamard_size, 128 if fast else 1)


def _apply_sharded(x, weight, recipe: LinearRecipe):
    """`_apply` for DTensor operands. Colwise (weight Shard(0), x Replicate): y Shard(-1), K (in_features) whole
    on every rank, the input gradient a Partial sum over the output features. Rowwise (weight Shard(1), x
    Shard(-1)): y Partial (the style's output hook reduces it), the input gradient Shard(-1). Raises ValueError
    for other layouts and for shards that would cut an MX / Hadamard block."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    if (
        not (_is_dtensor(x) and _is_dtensor(weight))
        or weight.device_mesh.ndim != 1
        or x.device_mesh != weight.device_mesh
    ):
        raise ValueError(
            f"AdaHOPLinear under tensor parallelism takes x and weight as DTensors on one 1-D mesh (got x "
            f"{type(x).__name__}, weight {type(weight).__name__}): apply ColwiseParallel / RowwiseParallel to the layer"
        )
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x [..., {weight.shape[-1]}] expected for weight {tuple(weight.shape)}, got {tuple(x.shape)}")
    mesh, last = weight.device_mesh, x.dim() - 1
    (wp,), (xp,) = weight.placements, x.placements
    if wp == Shard(0) and xp == Replicate():
        sharded, x_grad, out = "out_features", Partial(), Shard(last)  # colwise
    elif wp == Shard(1) and xp == Shard(last):
        sharded, x_grad, out = "in_features", Shard(last), Partial()  # rowwise
    else:
        raise ValueError(
            f"AdaHOPLinear under tensor parallelism supports weight Shard(0) with x Replicate (colwise) and weight "
            f"Shard(1) with x Shard(-1) (rowwise); got weight {wp}, x {xp}"
        )
    w_local = weight.to_local(grad_placements=weight.placements)
    x_local = x.to_local(grad_placements=(x_grad,))
    local = w_local.shape[0] if sharded == "out_features" else w_local.shape[1]
    need = tp_multiple(recipe.hadamard_size, backend.fast_device(w_local.device))
    if local % need != 0:
        raise ValueError(
            f"AdaHOPLinear under tensor parallelism: {sharded}={weight.shape[0 if sharded == 'out_features' else 1]} "
            f"over {mesh.size()} ranks leaves {local} per rank, not a multiple of {need} (MX block, hadamard_size"
            f"{', the GPU fast path' if need == 128 else ''}); use a tensor_parallel_degree that divides it into "
            f"multiples of {need}, or leave the layer out with filter_fqns"
        )
    y_local = _apply(x_local, w_local, recipe)
    shape = (*x.shape[:-1], weight.shape[0])
    return DTensor.from_local(
        y_local,
        mesh,
        (out,),
        run_check=False,
        shape=torch.Size(shape),
        stride=torch.empty(shape, device="meta").stride(),
    )


class AdaHOPModes:
    """What calibration and the plan need of any AdaHOP layer: a recipe, its modes, an observer."""

    recipe: LinearRecipe
    observer: Optional[Callable[[str, torch.Tensor], None]]

    @property
    def modes(self) -> dict[str, str]:
        return {slot: getattr(self.recipe, slot) for slot in SLOTS}

    def set_modes(self, forward_y: str | None = None, backward_gx: str | None = None, backward_gw: str | None = None):
        changes = dict(forward_y=forward_y, backward_gx=backward_gx, backward_gw=backward_gw)
        self.recipe = replace(self.recipe, **{k: v for k, v in changes.items() if v is not None})


class AdaHOPLinear(AdaHOPModes, nn.Linear):
    """nn.Linear whose three GEMMs run in MXFP4 with per-layer AdaHOP modes.

    Same parameters and state dict as nn.Linear. `observer`, when set, sees x, W and g of every step
    (this is how calibration labels the layer's operands).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        forward_y: str = HADAMARD,
        backward_gx: str = HADAMARD,
        backward_gw: str = HADAMARD,
        use_sr_grad: bool = False,
        randomized_hadamard: bool = False,
        hadamard_size: int = 32,
        outlier_k: int = DEFAULT_OUTLIER_K,
        hadamard_seed: int = 0,
        tile_b: str = "none",
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.recipe = LinearRecipe(
            forward_y,
            backward_gx,
            backward_gw,
            use_sr_grad,
            randomized_hadamard,
            hadamard_size,
            outlier_k,
            hadamard_seed,
            tile_b,
        )
        _check_dims(in_features, out_features, self.recipe)
        self.observer: Optional[Callable[[str, torch.Tensor], None]] = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "AdaHOPLinear":
        """An AdaHOPLinear holding the very same Parameter objects as `linear` (no copy, meta-safe)."""
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta", **kwargs)
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # observers (calibration, the quant-error probe) see eager steps only: the trainer runs the steps
        # that need them eagerly (adahop.train), a compiled graph leaves them out
        observe = self.observer is not None and not torch.compiler.is_compiling()
        if observe:
            self.observer("x", x.detach().reshape(-1, x.shape[-1]))
            self.observer("w", self.weight.detach())
        if _is_dtensor(self.weight) or _is_dtensor(x):
            y = _apply_sharded(x, self.weight, self.recipe)
        else:
            y = _apply(x, self.weight, self.recipe)
        if observe and y.requires_grad:
            observer = self.observer

            def observe_grad(g: torch.Tensor) -> None:
                observer("g", g.detach().reshape(-1, g.shape[-1]))

            y.register_hook(observe_grad)
        if self.bias is not None:
            (bias,), _ = autocast_inputs(self.bias)  # F.linear casts its bias too
            y = y + bias
        return y

    def extra_repr(self) -> str:
        r = self.recipe
        return (
            f"{super().extra_repr()}, forward_y={r.forward_y}, backward_gx={r.backward_gx}, "
            f"backward_gw={r.backward_gw}, "
            f"use_sr_grad={r.use_sr_grad}, randomized_hadamard={r.randomized_hadamard}, hadamard_size={r.hadamard_size}"
        )
