"""Block-diagonal normalized Hadamard transform along one axis (the IHT of AdaHOP).

The transform is defined as a fast Walsh-Hadamard butterfly in float32 with a fixed order of
operations (stage h = 1, 2, 4, ...: (a, b) -> (a + b, a - b) for the pairs h apart), followed by one
multiplication by the float32 constant 1/sqrt(block). Every kernel must use the same order so that the
quantized operands agree bit for bit. Normalized H is symmetric and orthogonal (H @ H = I), so
(A H)(H^T B) = A B for the two operands of a GEMM transformed along its inner dimension.
"""

from __future__ import annotations

import math

import torch

#: The Hadamard block sizes of every part of adahop: the transform, the layers (adahop.linear, attention)
#: and the training config (quantize.linear.mx.hadamard_size). Powers of two up to 128, the largest block
#: the fused GPU quantizer implements (adahop.kernels.quantize.MAX_HADAMARD), so that no accepted size
#: falls back to the slower reference path on a GPU.
MAX_HADAMARD_SIZE = 128
HADAMARD_SIZES = tuple(2**i for i in range(1, MAX_HADAMARD_SIZE.bit_length()))
HADAMARD_SIZES_TEXT = f"a power of two from 2 to {MAX_HADAMARD_SIZE} (" + ", ".join(map(str, HADAMARD_SIZES)) + ")"


def check_hadamard_size(block: int) -> int:
    """`block` if it is one of HADAMARD_SIZES, else ValueError (the one check of a Hadamard size)."""
    if not isinstance(block, int) or isinstance(block, bool) or block not in HADAMARD_SIZES:
        raise ValueError(f"hadamard_size must be {HADAMARD_SIZES_TEXT}, got {block!r}")
    return block


def hadamard_matrix(block: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix of order `block` (for references and tests)."""
    check_hadamard_size(block)
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < block:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h / math.sqrt(block)


def random_signs(length: int, seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A fixed +-1 float32 vector drawn from `seed` (same on every rank and device)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF)
    bits = torch.randint(0, 2, (length,), generator=gen, dtype=torch.int64)
    return (1.0 - 2.0 * bits.to(torch.float32)).to(device)


def block_hadamard(x: torch.Tensor, axis: int = -1, block: int = 32, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the normalized block-diagonal Hadamard (optionally after a +-1 diagonal) along `axis`.

    Returns float32. The axis length must be a multiple of `block`; `signs` (if given) has that length.
    """
    check_hadamard_size(block)
    ndim = x.dim()
    axis = axis % ndim
    length = x.shape[axis]
    if length % block != 0:
        raise ValueError(
            f"Hadamard blocks of {block} need the transformed axis ({axis}) to be a multiple of {block}, got {length}"
        )
    moved = x.movedim(axis, -1).to(torch.float32)
    if signs is not None:
        if signs.shape != (length,):
            raise ValueError(f"signs must have shape ({length},), got {tuple(signs.shape)}")
        moved = moved * signs.to(device=moved.device, dtype=torch.float32)
    lead = moved.shape[:-1]
    y = moved.reshape(math.prod(lead), length // block, block)  # explicit: lead may hold 0 rows
    h = 1
    while h < block:
        pairs = y.reshape(y.shape[0], y.shape[1], block // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2).reshape(y.shape)
        h *= 2
    y = y * torch.tensor(1.0 / math.sqrt(block), dtype=torch.float32)
    return y.reshape(*lead, length).movedim(-1, axis)
