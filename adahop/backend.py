"""The one dispatch point between the torch reference and the GPU kernels.

Every GEMM operand is handled in "K-major" form: a 2-D tensor [rows, K] whose last axis is the GEMM's
inner dimension, so that C = A @ B is computed as matmul(A, Bt) with A [M, K] and Bt = B^T [N, K].
An operand stored the other way round (K along dim 0, e.g. x when it is the right operand of the
weight-gradient GEMM) is passed with `k_dim=0` and transposed here, where a kernel can fuse the
transpose into its single pass.

The reference path below is plain torch: it produces dequantized float32 operands and multiplies them
in float32. GPU kernels (adahop.kernels) must produce the same quantized operands bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .hadamard import block_hadamard
from .mx import MXFP4Tensor, quantize_blocks


def reference_forced() -> bool:
    """ADAHOP_FORCE_REFERENCE=1 makes every device run the torch reference (for debugging kernels)."""
    return os.environ.get("ADAHOP_FORCE_REFERENCE", "0") not in ("", "0", "false", "False")


@dataclass
class Operand:
    """A K-major GEMM operand after (optional) Hadamard and MXFP4 quantization along K."""

    values: torch.Tensor  # reference form: float32 dequantized values [rows, K]


def to_k_major(t: torch.Tensor, k_dim: int) -> torch.Tensor:
    if t.dim() != 2 or k_dim not in (0, 1):
        raise ValueError(f"operands are 2-D with K on dim 0 or 1, got shape {tuple(t.shape)} and k_dim={k_dim}")
    return t if k_dim == 1 else t.t()


def transform(
    t: torch.Tensor,
    *,
    k_dim: int = 1,
    hadamard_size: int | None = None,
    signs: torch.Tensor | None = None,
    zero_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """K-major float32 copy of `t`, rows in `zero_rows` zeroed, then the block Hadamard along K."""
    k_major = to_k_major(t, k_dim).to(torch.float32)
    if zero_rows is not None and zero_rows.numel() > 0:
        k_major = k_major.index_fill(0, zero_rows, 0.0)
    if hadamard_size is not None:
        k_major = block_hadamard(k_major, axis=-1, block=hadamard_size, signs=signs)
    return k_major


def quantize(
    t: torch.Tensor,
    *,
    k_dim: int = 1,
    hadamard_size: int | None = None,
    signs: torch.Tensor | None = None,
    rounding: str = "nearest",
    zero_rows: torch.Tensor | None = None,
    packed: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Operand, MXFP4Tensor | None]:
    """Transform (see `transform`) and MXFP4-quantize an operand along K.

    Returns the operand the GEMM consumes and, if `packed`, the same quantization in packed form
    (two E2M1 codes per byte + E8M0 scales), which is what a layer saves for its backward pass.
    """
    k_major = transform(t, k_dim=k_dim, hadamard_size=hadamard_size, signs=signs, zero_rows=zero_rows)
    q = quantize_blocks(k_major, axis=-1, rounding=rounding, generator=generator)
    values = q.dequantize().reshape(k_major.shape)
    saved = None
    if packed:
        saved = MXFP4Tensor(q.packed_codes(), q.scale_bytes(), axis=-1, dtype=t.dtype)
    return Operand(values), saved


def from_packed(saved: MXFP4Tensor) -> Operand:
    """The GEMM operand of a packed tensor saved by `quantize(..., packed=True)`."""
    return Operand(saved.dequantize(torch.float32))


def matmul(a: Operand, bt: Operand, out_dtype: torch.dtype) -> torch.Tensor:
    """a @ bt^T for two quantized K-major operands, accumulated in float32."""
    return (a.values @ bt.values.t()).to(out_dtype)


def bf16_matmul(a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """a @ bt^T with both operands rounded to bfloat16 and float32 accumulation (the BF16 path)."""
    return a.to(torch.bfloat16).to(torch.float32) @ bt.to(torch.bfloat16).to(torch.float32).t()
