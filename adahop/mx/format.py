"""The MXFP4 format (OCP Microscaling v1.0): E2M1 elements, 32 per block, one E8M0 scale per block.

Everything here is plain torch and is the semantics every GPU kernel of adahop must reproduce.
Conventions that are ours (the OCP spec leaves them open):
- zero is always encoded as code 0 (a negative value that rounds to zero becomes +0);
- a block holding NaN or +-Inf gets scale byte 0xFF (NaN) and all-zero codes, so it dequantizes to all NaN;
- codes are packed two per byte, the element with the lower index in the low nibble.
"""

from __future__ import annotations

import operator

import torch

BLOCK_SIZE = 32
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest E2M1 binade (4 and 6 live in [2^2, 2^3))
E8M0_BIAS = 127
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127
E8M0_NAN = 255
ROUNDINGS = ("nearest", "stochastic")

# Magnitudes indexed by the 3 low bits of an E2M1 code (1 exponent-2 bits, 1 mantissa bit).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is not supported; allowed: {', '.join(ROUNDINGS)}")
    return rounding


def check_block_axis(length: int, axis: int, block: int = BLOCK_SIZE) -> None:
    if length % block != 0:
        raise ValueError(
            f"MXFP4 quantizes in blocks of {block} along axis {axis}, but that axis has length {length}, "
            f"which is not a multiple of {block}"
        )


def check_axis(ndim: int, axis: int) -> int:
    """`axis` of a tensor of `ndim` dims as a non-negative index; IndexError if there is no such axis
    (torch's own indexing would wrap an out-of-range axis onto another one)."""
    axis = operator.index(axis)  # TypeError for a float
    if ndim == 0:
        raise IndexError("MXFP4 quantizes along an axis, and a 0-d tensor has none: pass a tensor of at least 1 dim")
    if not -ndim <= axis < ndim:
        raise IndexError(f"axis {axis} is out of range for a {ndim}-d tensor (allowed: {-ndim}..{ndim - 1})")
    return axis % ndim


def check_real(x: torch.Tensor) -> None:
    if x.is_complex():
        raise TypeError(f"MXFP4 quantizes real numbers, got a {x.dtype} tensor: quantize x.real and x.imag separately")


def to_blocks(x: torch.Tensor, axis: int) -> torch.Tensor:
    """View `x` (as float32) with `axis` moved last and split into [..., n / 32, 32] blocks."""
    check_real(x)
    axis = check_axis(x.dim(), axis)
    length = x.shape[axis]
    check_block_axis(length, axis)
    moved = x.movedim(axis, -1).to(torch.float32)
    return moved.reshape(*moved.shape[:-1], length // BLOCK_SIZE, BLOCK_SIZE)


def from_blocks(blocks: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """Inverse of `to_blocks` (without the dtype change)."""
    flat = blocks.reshape(*blocks.shape[:-2], blocks.shape[-2] * blocks.shape[-1])
    return flat.movedim(-1, check_axis(ndim, axis))


def shared_exponents(amax: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """Unbiased block exponent e (int32) so that the block scale is 2^e.

    nearest: the OCP choice floor(log2(amax)) - 2, so the block max lands in [4, 8) and values above
    6 saturate. stochastic: one more where amax would exceed 6 * 2^e, so nothing ever saturates and
    stochastic rounding stays unbiased. Zero blocks get the smallest exponent. Computed from the
    float's exponent bits (frexp), never from a rounded log2.
    """
    check_rounding(rounding)
    _, frexp_exp = torch.frexp(amax)  # amax = m * 2^frexp_exp with m in [0.5, 1)
    exp = frexp_exp.to(torch.int32) - 1 - E2M1_EMAX
    if rounding == "stochastic":
        exp = exp + (amax > torch.ldexp(torch.full_like(amax, E2M1_MAX), exp)).to(torch.int32)
    exp = torch.where(amax > 0, exp, torch.full_like(exp, E8M0_MIN_EXP))
    return exp.clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)


def round_to_e2m1(v: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """Round float32 values already divided by their block scale onto the signed E2M1 grid."""
    check_rounding(rounding)
    mag = v.abs()
    # Grid spacing of E2M1 per binade: 0.5 below 2, 1 in [2, 4), 2 from 4 up. Dividing by a power of
    # two is exact, so each branch is a plain integer rounding.
    step = torch.where(mag < 2, 0.5, torch.where(mag < 4, 1.0, 2.0))
    if rounding == "nearest":
        q = torch.round(mag / step) * step  # torch.round rounds half to even
    else:
        lower = torch.floor(mag / step) * step
        frac = (mag - lower) / step
        u = torch.rand(mag.shape, generator=generator, device=mag.device, dtype=torch.float32)
        q = lower + (u < frac).to(mag.dtype) * step
    q = q.clamp(max=E2M1_MAX)
    return torch.where(v < 0, -q, q)


def e2m1_codes(q: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8, sign in bit 3) of values exactly on the signed E2M1 grid."""
    mag = q.abs()
    index = torch.where(mag < 2, mag * 2, torch.where(mag < 4, mag + 2, mag / 2 + 4))
    sign = ((q < 0) & (mag > 0)).to(torch.uint8) << 3
    return index.to(torch.uint8) | sign


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of 4-bit E2M1 codes."""
    table = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=codes.device)
    mag = table[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack [..., 2n] 4-bit codes into [..., n] bytes, the lower index in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(data: torch.Tensor) -> torch.Tensor:
    low, high = data & 0x0F, data >> 4
    return torch.stack((low, high), dim=-1).reshape(*data.shape[:-1], data.shape[-1] * 2)
