"""Quantize / dequantize tensors to MXFP4 along one axis (the reference semantics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .format import (
    BLOCK_SIZE,
    E8M0_BIAS,
    E8M0_NAN,
    check_axis,
    e2m1_codes,
    e2m1_values,
    from_blocks,
    pack_nibbles,
    round_to_e2m1,
    shared_exponents,
    to_blocks,
    unpack_nibbles,
)


@dataclass
class QuantizedBlocks:
    """One quantization of a tensor, blocked as [..., n / 32, 32] with the quantized axis moved last."""

    values: torch.Tensor  # float32 signed E2M1 grid values (before scaling), [..., nb, 32]
    exponents: torch.Tensor  # int32 unbiased block exponents, [..., nb]
    nonfinite: torch.Tensor  # bool, block held NaN or Inf, [..., nb]

    def dequantize(self) -> torch.Tensor:
        out = torch.ldexp(self.values, self.exponents.unsqueeze(-1))
        return torch.where(self.nonfinite.unsqueeze(-1), torch.nan, out)

    def scale_bytes(self) -> torch.Tensor:
        biased = (self.exponents + E8M0_BIAS).to(torch.uint8)
        return torch.where(self.nonfinite, torch.full_like(biased, E8M0_NAN), biased)

    def packed_codes(self) -> torch.Tensor:
        codes = e2m1_codes(self.values)
        flat = codes.reshape(*codes.shape[:-2], codes.shape[-2] * codes.shape[-1])  # explicit: may hold 0 rows
        return pack_nibbles(flat)


def quantize_blocks(
    x: torch.Tensor, axis: int = -1, rounding: str = "nearest", generator: torch.Generator | None = None
) -> QuantizedBlocks:
    blocks = to_blocks(x, axis)
    finite = torch.isfinite(blocks)
    nonfinite = ~finite.all(dim=-1)
    blocks = torch.where(finite, blocks, 0.0)
    amax = blocks.abs().amax(dim=-1)
    exponents = shared_exponents(amax, rounding)
    scaled = torch.ldexp(blocks, -exponents.unsqueeze(-1))
    values = round_to_e2m1(scaled, rounding, generator)
    values = torch.where(nonfinite.unsqueeze(-1), 0.0, values)
    return QuantizedBlocks(values, exponents, nonfinite)


def quantize_mxfp4(
    x: torch.Tensor, axis: int = -1, rounding: str = "nearest", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4-quantize `x` along `axis`.

    Returns (data, scales): `data` uint8 holding two E2M1 codes per byte (the axis length halved),
    `scales` uint8 E8M0 biased exponents, one per 32 elements (the axis length divided by 32).
    Both keep `axis` at its position.
    """
    q = quantize_blocks(x, axis, rounding, generator)  # checks x and axis
    axis = check_axis(x.dim(), axis)
    data = q.packed_codes().movedim(-1, axis)
    scales = q.scale_bytes().movedim(-1, axis)
    return data.contiguous(), scales.contiguous()


def dequantize_mxfp4(
    data: torch.Tensor, scales: torch.Tensor, axis: int = -1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of `quantize_mxfp4`: the dequantized values as `dtype`."""
    if data.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"data and scales must be uint8, got {data.dtype} and {scales.dtype}")
    ndim = data.dim()
    axis = check_axis(ndim, axis)
    if scales.dim() != ndim:
        raise ValueError(f"data and scales must have the same number of dims, got {ndim} and {scales.dim()}")
    codes = unpack_nibbles(data.movedim(axis, -1))
    n = codes.shape[-1]
    nb = scales.shape[axis]
    if nb * BLOCK_SIZE != n:
        raise ValueError(f"data holds {n} elements along axis {axis} but scales hold {nb} blocks of {BLOCK_SIZE}")
    values = e2m1_values(codes).reshape(*codes.shape[:-1], nb, BLOCK_SIZE)
    scale_bytes = scales.movedim(axis, -1)
    exponents = scale_bytes.to(torch.int32) - E8M0_BIAS
    out = torch.ldexp(values, exponents.unsqueeze(-1))
    out = torch.where((scale_bytes == E8M0_NAN).unsqueeze(-1), torch.nan, out)
    return from_blocks(out, axis, ndim).to(dtype)


def fake_quantize_mxfp4(
    x: torch.Tensor, axis: int = -1, rounding: str = "nearest", generator: torch.Generator | None = None
) -> torch.Tensor:
    """The MXFP4 values of `x` quantized along `axis`, dequantized back to x's float dtype."""
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    q = quantize_blocks(x, axis, rounding, generator)
    return from_blocks(q.dequantize(), axis, x.dim()).to(out_dtype)
