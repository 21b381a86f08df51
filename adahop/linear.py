"""The AdaHOP MXFP4 linear: an autograd Function running its three GEMMs per mode, and its module.

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

import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import backend
from .amp import autocast_inputs
from .hadamard import check_hadamard_size, random_signs
from .modes import FULL_PRECISION, HADAMARD, NONE, OE_LEFT, OE_RIGHT, SLOTS, check_mode
from .mx import BLOCK_SIZE, MXFP4Tensor
from .outliers import DEFAULT_OUTLIER_K, check_outlier_k, top_rows

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

    def mode(self, slot: str) -> str:
        mode = getattr(self, slot)
        return GW_EFFECTIVE_MODE.get(mode, mode) if slot == "backward_gw" else mode

    def tile_b_for(self, slot: str) -> bool:
        return backend.tile_b_slot(self.tile_b, slot)

    def hadamard_size_for(self, slot: str) -> int | None:
        return self.hadamard_size if self.mode(slot) in (HADAMARD, OE_LEFT, OE_RIGHT) else None

    def signs_for(self, slot: str, k: int, device) -> torch.Tensor | None:
        if not self.randomized_hadamard or self.hadamard_size_for(slot) is None:
            return None
        return _signs(k, _slot_seed(self.hadamard_seed, slot), str(device))


def _slot_seed(seed: int, slot: str) -> int:
    return zlib.crc32(f"{seed}:{slot}".encode())


@lru_cache(maxsize=256)
def _signs(k: int, seed: int, device: str) -> torch.Tensor:
    return random_signs(k, seed, device)


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
# (scripts/gpu_deficient_probe.sh, docs/kernels.md): only g of the input gradient, along the output features.
ROW_FIX_SLOTS = ("backward_gx",)


def slot_gemm(
    a: torch.Tensor, a_k_dim: int, right: RightOperand, mode: str, recipe: LinearRecipe, slot: str, rounding: str,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """out = A @ B for one slot, rounded once to `out_dtype`. `a` is the high-precision left operand as stored.

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
    a_operand = quantize_left(a, a_k_dim, recipe, slot, rounding, zero_rows=left_rows)
    out = backend.matmul(a_operand, right_operand, out_dtype, tag=slot, fix_rows=slot in ROW_FIX_SLOTS,
                         tile_b=recipe.tile_b_for(slot))
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
    x2d: torch.Tensor, weight: torch.Tensor, recipe: LinearRecipe
) -> torch.Tensor:
    """The forward GEMM y = x W^T of `recipe` (no autograd bookkeeping)."""
    mode = recipe.mode("forward_y")
    w_right = prepare_right(weight, 1, mode, recipe, "forward_y", for_saving=False)
    return slot_gemm(x2d, 1, w_right, mode, recipe, "forward_y", "nearest", x2d.dtype)


class _MXFP4LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, recipe: LinearRecipe):
        _, gx_mode, gw_mode = (recipe.mode(s) for s in SLOTS)
        y = forward_gemm(x2d, weight, recipe)

        ctx.recipe = recipe
        ctx.tokens = x2d.shape[0]
        ctx.x_dtype, ctx.w_dtype = x2d.dtype, weight.dtype
        ctx.gx_right = ctx.gw_right = None
        saved = []
        if ctx.needs_input_grad[0]:
            if gx_mode == OE_RIGHT:
                ctx.gx_right = prepare_right(weight, 0, gx_mode, recipe, "backward_gx", for_saving=True)
            else:  # W itself, quantized in backward when the mode wants it (module docstring)
                ctx.gx_right = RightOperand(full=weight, full_k_dim=0)
            saved += _stash(ctx.gx_right)
        if ctx.needs_input_grad[1]:
            ctx.gw_right = _x_for_gw(x2d, recipe)
            saved += _stash(ctx.gw_right)
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        recipe = ctx.recipe
        tensors = list(ctx.saved_tensors)
        gx_saved = _unstash(ctx.gx_right, tensors) if ctx.gx_right is not None else None
        gw_saved = _unstash(ctx.gw_right, tensors) if ctx.gw_right is not None else None
        rounding = "stochastic" if recipe.use_sr_grad else "nearest"
        gx = gw = None
        if gx_saved is not None:
            mode = recipe.mode("backward_gx")
            right = gx_saved
            if mode in (HADAMARD, NONE):
                right = prepare_right(right.full, 0, mode, recipe, "backward_gx", for_saving=False)
            gx = slot_gemm(gy, 1, right, mode, recipe, "backward_gx", rounding, ctx.x_dtype)
        if gw_saved is not None:
            mode = recipe.mode("backward_gw")
            g_padded = _pad_rows(gy, _gw_row_multiple(recipe))
            gw = slot_gemm(g_padded, 0, gw_saved, mode, recipe, "backward_gw", rounding, ctx.w_dtype)
        ctx.gx_right = ctx.gw_right = None
        return gx, gw, None


def quantize_left(a: torch.Tensor, a_k_dim: int, recipe: LinearRecipe, slot: str, rounding: str,
                  zero_rows: Optional[torch.Tensor] = None) -> backend.Operand:
    """The left operand of a quantized slot (`zero_rows`: the rows OE-left takes out)."""
    k = a.shape[a_k_dim]
    operand, _ = backend.quantize(a, k_dim=a_k_dim, hadamard_size=recipe.hadamard_size_for(slot),
                                  signs=recipe.signs_for(slot, k, a.device), rounding=rounding, zero_rows=zero_rows)
    return operand


def _x_for_gw(x2d: torch.Tensor, recipe: LinearRecipe) -> RightOperand:
    """x as the right operand of the weight gradient (K = tokens, zero-padded), kept for backward."""
    x_padded = _pad_rows(x2d, _gw_row_multiple(recipe))
    return prepare_right(x_padded, 0, recipe.mode("backward_gw"), recipe, "backward_gw", for_saving=True)


def _gw_row_multiple(recipe: LinearRecipe) -> int:
    # The token axis is K of the weight-gradient GEMM: zero rows pad it to whole MX / Hadamard blocks,
    # which adds nothing to g^T x.
    return max(BLOCK_SIZE, recipe.hadamard_size)


_STASHED = ("full", "rows", "extracted")


def _tensors_of(right: RightOperand) -> list:
    """The tensors a RightOperand holds (None where absent), in the order _stash saves them: the packed
    codes and scales first, then _STASHED."""
    packed = [right.packed.data, right.packed.scales] if right.packed is not None else []
    return packed + [getattr(right, name) for name in _STASHED]


def _stash(right: RightOperand) -> list:
    """Move the tensors of `right` into the list given to save_for_backward (None where absent)."""
    tensors = _tensors_of(right)
    for name in _STASHED:
        setattr(right, name, None)
    if right.packed is not None:
        right.packed = MXFP4Tensor(None, None, right.packed.axis, right.packed.dtype)
    return tensors


def _unstash(right: RightOperand, tensors: list) -> RightOperand:
    packed = None
    if right.packed is not None:
        packed = MXFP4Tensor(tensors.pop(0), tensors.pop(0), right.packed.axis, right.packed.dtype)
    full, rows, extracted = (tensors.pop(0) for _ in _STASHED)
    return RightOperand(packed=packed, rows=rows, extracted=extracted, full=full, full_k_dim=right.full_k_dim)


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
        forward_y, backward_gx, backward_gw, use_sr_grad, randomized_hadamard, hadamard_size, outlier_k, hadamard_seed,
        tile_b,
    )
    return _apply(x, weight, recipe)


def _apply(x: torch.Tensor, weight: torch.Tensor, recipe: LinearRecipe) -> torch.Tensor:
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x [..., {weight.shape[-1]}] expected for weight {tuple(weight.shape)}, got {tuple(x.shape)}")
    _check_dims(weight.shape[1], weight.shape[0], recipe)
    (x, weight), amp_off = autocast_inputs(x, weight)  # the dtype F.linear would compute in
    x2d = x.reshape(-1, x.shape[-1])
    with amp_off:
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            y2d = _MXFP4LinearFunction.apply(x2d, weight, recipe)
        else:  # inference / validation: no backward, so nothing is quantized for it
            y2d = forward_gemm(x2d, weight, recipe)
    return y2d.reshape(*x.shape[:-1], weight.shape[0])


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
            forward_y, backward_gx, backward_gw, use_sr_grad, randomized_hadamard, hadamard_size, outlier_k, hadamard_seed,
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
        if self.observer is not None:
            self.observer("x", x.detach().reshape(-1, x.shape[-1]))
            self.observer("w", self.weight.detach())
        y = _apply(x, self.weight, self.recipe)
        if self.observer is not None and y.requires_grad:
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
            f"{super().extra_repr()}, forward_y={r.forward_y}, backward_gx={r.backward_gx}, backward_gw={r.backward_gw}, "
            f"use_sr_grad={r.use_sr_grad}, randomized_hadamard={r.randomized_hadamard}, hadamard_size={r.hadamard_size}"
        )
