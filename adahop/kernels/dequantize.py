"""Packed MXFP4 -> bf16 values in one pass (Triton): the operands of adahop.grouped_mm's BF16 grouped GEMMs.

The torch reference is `adahop.mx.quantize.dequantize_mxfp4(..., dtype=torch.bfloat16)` (float32 values, then
rounded to bf16); every MXFP4 value of a block exponent in [-127, 127] is a bf16 value, so both give the same
bits. The kernel builds each result's bf16 bit pattern from the code and the E8M0 byte with integer arithmetic,
so no float operation (and no flush of subnormals) is involved:

    code = s e1 e0 m (sign, two exponent bits, one mantissa bit), scale byte b (2^(b - 127), 255 = NaN)
    |value| = 2^(e - 1) (1 + m / 2) 2^(b - 127) for e >= 1,  m / 2 * 2^(b - 127) for e = 0
    bf16 exponent field f = e + b - 1 (e >= 1) or b - 1 (e = 0, m = 1: a power of two); mantissa bits m << 6
    f <= 0: subnormal, the significand (1 << 7 | m << 6) shifted right by 1 - f (f >= -1: exact)
    f >= 255: beyond bf16's range, inf (as float32 gives it, then bf16)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 32
_BLOCK = tl.constexpr(BLOCK)  # what the kernel reads (a Triton kernel reads only constexpr globals)


@triton.jit
def _bf16_bits(code, b):
    """bf16 bit patterns (int32) of E2M1 codes with E8M0 bytes b (see the module docstring)."""
    e = (code >> 1) & 3
    m = code & 1
    f = tl.where(e > 0, e + b - 1, b - 1)
    mbit = tl.where(e > 0, m, 0)  # 0.5 (e = 0, m = 1) is a power of two
    normal = (f << 7) | (mbit << 6)
    subnormal = ((1 << 7) | (mbit << 6)) >> tl.minimum(tl.maximum(1 - f, 0), 8)
    mag = tl.where(f > 0, normal, subnormal)
    mag = tl.where((e == 0) & (m == 0), 0, mag)  # a zero code
    mag = tl.where(f >= 255, 0x7F80, mag)  # inf
    bits = tl.where((code & 8) != 0, mag | 0x8000, mag)
    return tl.where(b == 255, 0x7FC0, bits)  # a NaN block


@triton.jit
def _dequantize_kernel(packed_ptr, scales_ptr, out_ptr, R, K, BR: tl.constexpr, BB: tl.constexpr):
    # one program: BR rows x BB packed bytes (2 BB values); each byte read once, both nibbles written
    rows = (tl.program_id(0) * BR + tl.arange(0, BR))[:, None].to(tl.int64)
    cols = (tl.program_id(1) * BB + tl.arange(0, BB))[None, :]  # byte index
    inside = (rows < R) & (cols < K // 2)
    byte = tl.load(packed_ptr + rows * (K // 2) + cols, mask=inside, other=0).to(tl.int32)
    b = tl.load(scales_ptr + rows * (K // _BLOCK) + cols // (_BLOCK // 2), mask=inside, other=127).to(tl.int32)
    low = _bf16_bits(byte & 15, b)  # the lower index in the low nibble
    high = _bf16_bits(byte >> 4, b)
    both = tl.join(low, high).reshape(BR, 2 * BB)
    out_cols = (tl.program_id(1) * 2 * BB + tl.arange(0, 2 * BB))[None, :]
    tl.store(out_ptr + rows * K + out_cols, both.to(tl.int16), mask=(rows < R) & (out_cols < K))


@torch.compiler.disable
def dequantize_bf16(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """bf16 [R, K] values of a K-major packed operand (packed uint8 [R, K/2], scales uint8 [R, K/32])."""
    R, K = packed.shape[0], packed.shape[1] * 2
    if packed.dtype != torch.uint8 or scales.dtype != torch.uint8 or scales.shape != (R, K // BLOCK):
        raise ValueError(
            f"expected packed uint8 [R, K/2] and scales uint8 [R, K/32], got {packed.dtype} "
            f"{tuple(packed.shape)} and {scales.dtype} {tuple(scales.shape)}"
        )
    out = torch.empty((R, K), dtype=torch.int16, device=packed.device)
    br, bb = 16, 128
    _dequantize_kernel[(triton.cdiv(R, br), triton.cdiv(K // 2, bb))](
        packed.contiguous(), scales.contiguous(), out, R, K, BR=br, BB=bb, num_warps=4
    )
    return out.view(torch.bfloat16)
