"""x's two quantized forms as custom ops of their own, outside the linear's forward op.

A linear quantizes its input x twice: along the features for the forward GEMM (its left operand), and along
the tokens for the weight gradient (the packed form kept for backward). Linears that read the same x with the
same settings (q, k and v; w1 and w3 of a SwiGLU) would quantize it once each. As separate, side-effect-free
ops with plain arguments, identical calls on one x are merged by the common-subexpression elimination of a
compiled training graph (AOT autograd), so each form is computed once and, for the saved one, kept once.
Eager runs call them once per linear, with the same bits.

Both ops take the Hadamard block (0: none) and the random signs' seed (-1: none) instead of tensors, so that
two calls are equal exactly when their arguments are.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from . import backend
from .hadamard import random_signs


def signs(k: int, seed: int, device: torch.device | str) -> torch.Tensor | None:
    """The random Hadamard signs of a K of `k` from `seed` (-1: none), made once per (k, seed, device)."""
    return None if seed < 0 else _signs(k, seed, str(device))


@lru_cache(maxsize=256)
def _signs(k: int, seed: int, device: str) -> torch.Tensor:
    return random_signs(k, seed, device)


def left_is_fast(t: torch.Tensor, hadamard_size: int) -> bool:
    """Whether `quantize_left_operand` gives the fp8 form (GPU fast path) rather than reference values."""
    return t.dim() == 2 and backend._fast_ok(t, t.shape[1], hadamard_size or None)


@torch.library.custom_op("adahop::quantize_left_operand", mutates_args=())
def quantize_left_operand(
    t: torch.Tensor, hadamard_size: int, signs_seed: int, fast: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward GEMM's left operand: t [T, K] transformed and MXFP4-quantized along K (nearest rounding).

    `fast` (what `left_is_fast` said when the caller ran, a compiled graph's constant: its fake and real outputs
    agree even if the active state changes later): (fp8 e5m2 [T, K], 1x128 scales fp32 [K/128, T],
    deficient-block count int32 [1]), the wide form a GEMM's left operand takes
    (adahop.backend.Operand.materialize). Otherwise: (float32 [T, K] dequantized values, two empty tensors)."""
    hsize = hadamard_size or None
    sg = signs(t.shape[1], signs_seed, t.device)
    if fast:
        from .kernels.quantize import fused_quantize

        count = torch.zeros(1, dtype=torch.int32, device=t.device)
        out = fused_quantize(
            t, hadamard_size=hsize, signs=sg, write_packed=False, write_fp8=True, wide=True, count=count
        )
        return out["fp8"], out["gscale"], count
    operand, _ = backend.quantize(t, hadamard_size=hsize, signs=sg)
    return operand.values, t.new_empty(0, dtype=torch.uint8), t.new_empty(0, dtype=torch.int32)


@quantize_left_operand.register_fake
def _(t, hadamard_size, signs_seed, fast):
    rows, k = t.shape
    if fast:
        return (
            t.new_empty((rows, k), dtype=torch.float8_e5m2),
            t.new_empty((k // 128, rows), dtype=torch.float32),
            t.new_empty(1, dtype=torch.int32),
        )
    empty = t.new_empty(0, dtype=torch.uint8), t.new_empty(0, dtype=torch.int32)
    return t.new_empty((rows, k), dtype=torch.float32), *empty


def padded_rows(rows: int, multiple: int) -> int:
    return -(-rows // multiple) * multiple


@torch.library.custom_op("adahop::quantize_saved_operand", mutates_args=())
def quantize_saved_operand(
    t: torch.Tensor, row_multiple: int, hadamard_size: int, signs_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight gradient's right operand x^T as backward keeps it: t [T, K] with its rows (tokens) zero-padded
    to a multiple of `row_multiple`, transformed and MXFP4-quantized along them (nearest rounding), packed:
    (E2M1 codes uint8 [K, T'/2], E8M0 scales uint8 [K, T'/32]), the same on every device."""
    from .linear import _pad_rows  # the weight gradient's own padding (linear imports this module)

    t = _pad_rows(t, row_multiple)
    sg = signs(t.shape[0], signs_seed, t.device)
    _, packed = backend.quantize(t, k_dim=0, hadamard_size=hadamard_size or None, signs=sg, packed=True)
    return packed.data, packed.scales


@quantize_saved_operand.register_fake
def _(t, row_multiple, hadamard_size, signs_seed):
    rows, k = padded_rows(t.shape[0], row_multiple), t.shape[1]
    return t.new_empty((k, rows // 2), dtype=torch.uint8), t.new_empty((k, rows // 32), dtype=torch.uint8)


def left_operand(parts: list[torch.Tensor], t: torch.Tensor, hadamard_size: int, signs_seed: int) -> backend.Operand:
    """The backend operand of `quantize_left_operand`'s outputs for the linear's GEMM. On the fast path its
    count joins the step's deferred counter (one read per step, adahop.kernels.deferred); the packed form,
    needed on the rare exact-correction path only, is rewritten from `t` then."""
    values_or_fp8, gscale, count = parts
    if values_or_fp8.dtype == torch.float32:
        return backend.Operand(values=values_or_fp8)
    from .kernels.deferred import counter_for
    from .kernels.gemm import FastOperand
    from .kernels.quantize import fused_quantize

    shared = counter_for(count.device)
    if shared is not None:
        shared.add_(count)
        count = shared
    sg = signs(t.shape[1], signs_seed, t.device)
    repack = lambda: fused_quantize(  # noqa: E731
        t, hadamard_size=hadamard_size or None, signs=sg, write_packed=True, write_fp8=False
    )
    return backend.Operand(fast=FastOperand(values_or_fp8, gscale, count, meta={"repack": repack}))
