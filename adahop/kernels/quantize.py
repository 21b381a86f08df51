"""Fused Hadamard + MXFP4 quantization kernels (Triton), and the re-encode kernel for saved operands.

One pass over a 2-D operand, K (the GEMM's inner dimension) along either axis of the input:

    bf16/fp32 tile -> [zero extracted rows] -> [x random signs] -> block Hadamard (FWHT, fixed op order)
        -> MXFP4 along K (nearest or stochastic) -> writes, K-major ([rows, K]):
             packed E2M1 codes (two per byte, lower index in the low nibble) + E8M0 scale bytes
             fp8 e4m3 + one fp32 power-of-two scale per 128 along K (or per 128x128 tile)

The torch reference each kernel must match bit for bit is `adahop.backend.quantize` (which uses
`adahop.hadamard.block_hadamard` and `adahop.mx.quantize_blocks`); `reference_*` below restates the fp8
re-encoding in torch for tests and for the rare-block correction.

FP8 re-encoding (see docs/kernels.md): an MXFP4 element is q * 2^e_b with q on the E2M1 grid and e_b its
32-block's exponent. For a group of four blocks (128 along K) let E = max e_b over the group's finite
blocks and G = max(E - 6, -126). The group's fp32 scale is 2^G and each element is stored as the e4m3
number q * 2^(e_b - G). With o = e_b - G <= 6, |q| * 2^o <= 6 * 64 = 384 <= 448 (e4m3 max), and the
smallest step of q (0.5) times 2^o is >= 2^-9 (e4m3's smallest subnormal) while o >= -8, so every
element is exact for gaps E - e_b <= 14. A nonzero finite block with o < -8 is "deficient": the kernel
writes zeros for it in the fp8 form, counts it, and the GEMM adds its exact contribution separately
(adahop.kernels.gemm). A block with NaN/Inf is written as e4m3 NaN, so the GEMM output is NaN where the
reference's is.

A GEMM's left operand takes the wide form, fp8 e5m2 with G = max(E - 13, -126): exact for gaps up to 28
(cuBLAS accepts e5m2 on one side). With row flags, rows still holding a block beyond that are marked instead
of counted, and `fused_row_split` writes such rows as two exact e5m2 parts (hi + lo) for the GEMM's exact
recomputation of those rows (docs/kernels.md).
"""

from __future__ import annotations

import math
import os
import struct

import torch
import triton
import triton.language as tl

from .deferred import counter_for
from .state import active

GROUP = 128  # fp8 scale group along K (cuBLAS blockwise scaling granularity)
MX_BLOCK = 32
MAX_HADAMARD = 128  # largest Hadamard block the fused kernel handles (a multiple of the group is not needed)
FP8_NAN_BITS = 0x7F
MIN_OFFSET = -8  # smallest exact block offset e_b - G (see module docstring)
MAX_OFFSET = 6
# The wide form (fp8 e5m2, for a GEMM's left operand): G = max(E - 13, -126), exact offsets -15..13, so
# gaps up to 28 (6 * 2^13 = 49152 <= 57344, the e5m2 maximum; 0.5 * 2^-15 = 2^-16, its smallest subnormal).
WIDE_MIN_OFFSET = -15
WIDE_MAX_OFFSET = 13


def fp8_window(wide: bool) -> tuple[int, int]:
    """(smallest, largest) exact block offset e_b - G of the e4m3 (narrow) or e5m2 (wide) fp8 form."""
    return (WIDE_MIN_OFFSET, WIDE_MAX_OFFSET) if wide else (MIN_OFFSET, MAX_OFFSET)


def fp8_dtype(wide: bool) -> torch.dtype:
    return torch.float8_e5m2 if wide else torch.float8_e4m3fn


ROUND_NEAREST = 0
ROUND_SR_PHILOX = 1  # uniforms from Philox: output i % 4 of tl.rand4x(seed, i // 4), i = r * K + k
ROUND_SR_GIVEN = 2  # uniforms read from a float32 [R, K] tensor (tests: same draws as the reference)


@triton.jit
def _pow2(e):
    """2^e as float32 for int32 e in [-126, 127] (built from the exponent bits, exact)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _butterfly(y, BR: tl.constexpr, BK: tl.constexpr, H: tl.constexpr):
    """One FWHT stage: for pairs H apart inside blocks of 2H, (a, b) -> (a + b, a - b)."""
    y4 = tl.reshape(y, [BR, BK // (2 * H), 2, H])
    y4 = tl.permute(y4, [0, 1, 3, 2])
    a, b = tl.split(y4)
    y4 = tl.join(a + b, a - b)
    y4 = tl.permute(y4, [0, 1, 3, 2])
    return tl.reshape(y4, [BR, BK])


@triton.jit
def _butterfly_fma(y, BR: tl.constexpr, BK: tl.constexpr, H: tl.constexpr):
    """The same stage as one multiply-add per element: (a, b) -> (a + b, a - b) is (1 * a + b, -1 * b + a),
    whose products by +-1 are exact, so the sums round as a + b and a - b do. Each element's partner is
    the pair's integer sum of bits less its own bits (exact: two's complement wraps both ways), a sum
    over the pair axis that compiles to one shuffle or none (and that Triton's interpreter runs as one
    numpy sum, where tl.flip runs element by element)."""
    y4 = tl.reshape(y, [BR, BK // (2 * H), 2, H])
    bits = y4.to(tl.int32, bitcast=True)
    partner = (tl.sum(bits, axis=2)[:, :, None, :] - bits).to(tl.float32, bitcast=True)
    i = tl.arange(0, 2)[None, None, :, None]
    y4 = y4 * tl.where(i == 0, 1.0, -1.0) + partner
    return tl.reshape(y4, [BR, BK])


@triton.jit
def _stage(y, BR: tl.constexpr, BK: tl.constexpr, H: tl.constexpr, HVARIANT: tl.constexpr):
    if HVARIANT == 0:
        return _butterfly(y, BR, BK, H)
    else:
        return _butterfly_fma(y, BR, BK, H)


@triton.jit
def _hadamard(y, BR: tl.constexpr, BK: tl.constexpr, HSIZE: tl.constexpr, HSCALE: tl.constexpr, HVARIANT: tl.constexpr):
    if HSIZE >= 2:
        y = _stage(y, BR, BK, 1, HVARIANT)
    if HSIZE >= 4:
        y = _stage(y, BR, BK, 2, HVARIANT)
    if HSIZE >= 8:
        y = _stage(y, BR, BK, 4, HVARIANT)
    if HSIZE >= 16:
        y = _stage(y, BR, BK, 8, HVARIANT)
    if HSIZE >= 32:
        y = _stage(y, BR, BK, 16, HVARIANT)
    if HSIZE >= 64:
        y = _stage(y, BR, BK, 32, HVARIANT)
    if HSIZE >= 128:
        y = _stage(y, BR, BK, 64, HVARIANT)
    if HSIZE >= 2:
        y = y * HSCALE
    return y


@triton.jit
def _fp8_bits(v, neg, nonfinite, HW_CVT: tl.constexpr, WIDE: tl.constexpr):
    """uint8 bits of the fp8 e4m3 (e5m2 if WIDE) numbers of magnitude v (exactly representable), negative
    where `neg`, NaN where `nonfinite` (broadcast to v's shape); any shape."""
    if HW_CVT:
        # the hardware conversion (cvt.rn.satfinite.e4m3x2 / e5m2x2.f32): exact, since v is representable
        v = tl.where(neg & (v > 0), -v, v)
        v = tl.where(nonfinite, float("nan"), v)
        if WIDE:
            bits = v.to(tl.float8e5).to(tl.uint8, bitcast=True)
        else:
            bits = v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        # the same bits by integer arithmetic (Triton's CPU interpreter)
        vb = v.to(tl.int32, bitcast=True)
        fe = ((vb >> 23) & 0xFF) - 127
        if WIDE:  # e5m2: bias 15, 2 mantissa bits, subnormals in steps of 2^-16
            b = tl.where(fe >= -14, ((fe + 15) << 2) | ((vb >> 21) & 3), (v * 65536.0).to(tl.int32))
        else:  # e4m3: bias 7, 3 mantissa bits, subnormals in steps of 2^-9
            b = tl.where(fe >= -6, ((fe + 7) << 3) | ((vb >> 20) & 7), (v * 512.0).to(tl.int32))
        b = tl.where(v == 0, 0, b)
        b = tl.where(neg & (v != 0), b | 0x80, b)
        bits = tl.where(nonfinite, 0x7F, b).to(tl.uint8)
    return bits


@triton.jit
def _code_bytes(idx, neg, A: tl.constexpr, L: tl.constexpr):
    """Packed bytes [A, L/2] of E2M1 code indices idx (L along the packed axis, any leading [A, ...]
    layout that reshapes to [A, L]) with their signs: sign bit 8 (not for zero), lower index in the low
    nibble."""
    code = tl.where(neg & (idx > 0), idx | 8, idx)
    lo, hi = tl.split(tl.reshape(code, [A, L // 2, 2]))
    return (lo | (hi << 4)).to(tl.uint8)


@triton.jit
def _store_mx(
    packed_ptr, scales_ptr, rows64, row_ok, pid, KTOT, idx, neg, e, nonfinite, A: tl.constexpr, L: tl.constexpr
):
    """Store the MXFP4 form of a tile of A rows x L along K (code indices idx and signs neg, reshaping to
    [A, L]; block exponents e and non-finite flags [A, L/32]) into a K-major operand with KTOT along K, at
    K offset pid * L: packed codes [., KTOT/2] and E8M0 bytes [., KTOT/32] (255 for a non-finite block)."""
    pcols = pid * (L // 2) + tl.arange(0, L // 2)
    tl.store(
        packed_ptr + rows64[:, None] * (KTOT // 2) + pcols[None, :], _code_bytes(idx, neg, A, L), mask=row_ok[:, None]
    )
    scols = pid * (L // 32) + tl.arange(0, L // 32)
    tl.store(
        scales_ptr + rows64[:, None] * (KTOT // 32) + scols[None, :],
        tl.where(nonfinite, 255, e + 127).to(tl.uint8),
        mask=row_ok[:, None],
    )


@triton.jit
def _scaled(qabs, e):
    """qabs [A, NB, 32] (E2M1 magnitudes) times 2^e [A, NB], float32, exact for every block exponent the quantizer
    gives (e in [-127, 125]): as qabs / 2 * 2^(e + 1), since 2^-127 is no normal float and 6 * 2^125 * 2 would
    overflow."""
    return (qabs * 0.5) * _pow2(e + 1)[:, :, None]


@triton.jit
def _store_bf16(bf16_ptr, rows64, row_ok, cols64, K, qabs, neg, e, nonfinite, A: tl.constexpr, L: tl.constexpr):
    """Store the MXFP4 values of a tile of A rows x L along K (magnitudes qabs [A, L/32, 32], signs, block
    exponents, non-finite flags) as bf16 bit patterns (int16) into a K-major [., K] tensor at columns cols64: the
    values of the packed form (adahop.mx.dequantize_mxfp4), which bf16 holds exactly. A float32 MXFP4 value has
    two significant bits, so its low 16 bits are zero and its high half is the bf16 value, subnormals included.
    As in the packed form, zero is +0 and a non-finite block is NaN."""
    mag = _scaled(qabs, e)
    bits = (mag.to(tl.int32, bitcast=True) >> 16) | tl.where(neg & (qabs > 0), 0x8000, 0)
    bits = tl.reshape(tl.where(nonfinite[:, :, None], 0x7FC0, bits), [A, L])
    tl.store(bf16_ptr + rows64[:, None] * K + cols64[None, :], bits.to(tl.int16), mask=row_ok[:, None])


@triton.jit
def _widen(x, IN_BF16: tl.constexpr):
    """float32 values of a loaded tile; bf16 arrives as its int16 bits and is widened exactly (Triton's
    interpreter mis-converts bf16 subnormals through its own cast)."""
    if IN_BF16:
        y = (x.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _fp8_emit(
    qabs,
    neg,
    e,
    nonfinite,
    nonzero,
    rows,
    pid_k,
    R,
    K,
    fp8_ptr,
    gscale_ptr,
    count_ptr,
    rowflag_ptr,
    GS_STRIDE,
    BR: tl.constexpr,
    TILE: tl.constexpr,
    HW_CVT: tl.constexpr,
    WIDE: tl.constexpr,
    ON_DEFICIENT: tl.constexpr,
):
    """Write the fp8 form of one [BR, 128] tile given E2M1 magnitudes qabs [BR, 4, 32] (float32), their
    signs, block exponents e [BR, 4] (int32), non-finite flags [BR, 4] and which blocks hold a nonzero
    code (nonzero [BR, 4]; _block_nonzero for a freshly rounded tile). Deficient blocks (written as
    zero) are, by ON_DEFICIENT: 0 counted into count_ptr, 1 marked by row in rowflag_ptr (the GEMM then
    recomputes those rows exactly), 2 neither (the caller holds them elsewhere).
    WIDE writes e5m2 (exact offsets -15..13) instead of e4m3 (-8..6). 1x128 scales go to
    gscale_ptr[k_group * GS_STRIDE + row] (GS_STRIDE = R, except where two parts share one scale tensor)."""
    NB: tl.constexpr = 4
    HEAD: tl.constexpr = 13 if WIDE else 6  # largest exact offset
    LOW: tl.constexpr = -15 if WIDE else -8  # smallest exact offset
    row_ok = rows < R
    e_fin = tl.where(nonfinite, -127, e)
    if TILE:
        e_fin = tl.where(row_ok[:, None], e_fin, -127)
        gmax = tl.max(tl.max(e_fin, axis=1), axis=0)  # one exponent for the whole 128 x 128 tile
        G = tl.maximum(gmax - HEAD, -126) + tl.zeros([BR], dtype=tl.int32)
    else:
        G = tl.maximum(tl.max(e_fin, axis=1) - HEAD, -126)  # [BR]
    o = e_fin - G[:, None]  # [BR, NB]
    deficient = nonzero & (o < LOW) & (~nonfinite)
    o_c = tl.minimum(tl.maximum(o, LOW), HEAD)
    v = qabs * _pow2(o_c)[:, :, None]  # exact: |v| <= 6 * 2^HEAD, v a multiple of 2^(LOW - 1)
    v = tl.where(deficient[:, :, None], 0.0, v)
    cols = pid_k * 128 + tl.arange(0, 128)
    bits = tl.reshape(_fp8_bits(v, neg, nonfinite[:, :, None], HW_CVT, WIDE), [BR, NB * 32])
    tl.store(fp8_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], bits, mask=row_ok[:, None])
    # 1x128 scales stored [K / 128, R] (the K-group axis outer): a [R, K/128] column-major view for
    # cuBLAS's left operand and the [K/128, N] contiguous tensor it wants for the right one.
    # Tile scales stored [R / 128, K / 128]: cuBLAS takes its transpose view [K/128, N/128].
    if TILE:
        tl.store(gscale_ptr + (tl.program_id(0) * (K // 128) + pid_k), tl.max(_pow2(G), axis=0))
    else:
        tl.store(gscale_ptr + pid_k.to(tl.int64) * GS_STRIDE + rows, _pow2(G), mask=row_ok)
    ndef = tl.sum(tl.sum(tl.where(row_ok[:, None], deficient.to(tl.int32), 0), axis=1), axis=0)
    if ON_DEFICIENT == 0:
        if ndef > 0:  # rare: no atomic traffic in the common case
            tl.atomic_add(count_ptr, ndef)
    elif ON_DEFICIENT == 1:
        if ndef > 0:
            row_def = tl.max(deficient.to(tl.int32), axis=1) > 0
            tl.store(rowflag_ptr + rows, tl.full([BR], 1, tl.uint8), mask=row_ok & row_def)


@triton.jit
def _tile_coords(R, BR: tl.constexpr, BK: tl.constexpr):
    """This program's [BR rows x BK along K] tile: program ids, row and K indices (int32 and int64) and the
    rows that exist."""
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_k * BK + tl.arange(0, BK)
    return pid_r, pid_k, rows, cols, rows < R, rows.to(tl.int64), cols.to(tl.int64)


@triton.jit
def _mx_exponents(y3, ROUNDING: tl.constexpr, AXIS: tl.constexpr):
    """MXFP4 blocks of 32 along axis AXIS of y3 (adahop.mx.quantize_blocks), e.g. [A, NB, 32]: non-finite
    flags and block exponents (y3's shape less AXIS): floor(log2 amax) - 2 from the float's exponent bits
    (zero / subnormal amax -> -127), +1 for stochastic rounding where amax > 3 * 2^(e+1) (never clip:
    amax <= 6 * 2^e). The magnitudes' bits are compared as integers: they order like the floats, with
    every NaN above +inf above every finite value, so the block's largest bits say both its exponent and
    whether it holds a NaN or an infinity (a float max would drop NaNs; no per-element test is needed).
    The exponent of a non-finite block is meaningless: every caller replaces what it derives from it
    (codes, scale byte, fp8 bits) by the non-finite encoding."""
    amax_bits = tl.max(y3.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=AXIS)
    nonfinite = amax_bits >= 0x7F800000
    amax = amax_bits.to(tl.float32, bitcast=True)
    e = tl.maximum((amax_bits >> 23) - 129, -127)
    if ROUNDING != 0:
        e = e + (amax > 3.0 * _pow2(e + 1)).to(tl.int32)
    return nonfinite, e, amax


@triton.jit
def _block_nonzero(qabs, amax, e, ROUNDING: tl.constexpr, AXIS: tl.constexpr):
    """Blocks holding a nonzero E2M1 code, given their rounded magnitudes qabs, amax and exponent e.
    Rounding to nearest is monotonic, so a block has one exactly when its largest magnitude, amax * 2^-e
    on the block's grid, rounds above zero, i.e. exceeds 0.25 (0.25 itself ties to 0): one test per
    block instead of a reduction over its elements (that crosses lanes in the transposed launches).
    Stochastic rounding can lift any element, so there the codes are reduced."""
    if ROUNDING == 0:
        return amax * _pow2(-e) > 0.25
    else:
        return tl.max(qabs, axis=AXIS) > 0


@triton.jit
def _e2m1_nearest(mag):
    """Round half to even on the E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating at 6: (magnitude, code
    index). The grid step is 0.5 below 2, 1 in [2, 4), 2 from 4. Adding a float whose ulp is that step
    (2^22, 2^23, 2^24) rounds mag to whole steps, half to even, in one IEEE add; the subtraction is exact.
    The added constants carry 0, 2 and 4 steps more than the power of two (the first index of each range),
    so that the sum's low mantissa bits are the code index itself; the extra even step count leaves the
    tie to even unchanged."""
    magic = tl.where(mag < 2.0, 4194304.0, tl.where(mag < 4.0, 8388610.0, 16777224.0))  # 2^22, 2^23 + 2, 2^24 + 8
    s = mag + magic
    qabs = tl.minimum(s - magic, 6.0)
    idx = tl.minimum(s.to(tl.int32, bitcast=True) & 0xF, 7)
    return qabs, idx


@triton.jit
def _e2m1_stochastic(mag, u):
    """Stochastic rounding on the E2M1 grid (adahop.mx.quantize_blocks): up to the next grid value with
    probability (distance to the value below) / step, given uniforms u in [0, 1); saturates at 6."""
    step = tl.where(mag < 2.0, 0.5, tl.where(mag < 4.0, 1.0, 2.0))
    inv = tl.where(mag < 2.0, 2.0, tl.where(mag < 4.0, 1.0, 0.5))
    lower = tl.floor(mag * inv) * step
    frac = (mag - lower) * inv
    return tl.minimum(lower + (u < frac).to(tl.float32) * step, 6.0)


@triton.jit
def _uniforms(seed, rows64, pid, KTOT, A: tl.constexpr, L: tl.constexpr):
    """Uniforms in [0, 1) [A, L] for a tile of a K-major operand with KTOT along K: the rows rows64 (int64,
    [A]), the L elements along K from pid * L. Element i = row * KTOT + k takes output i % 4 of Philox
    called at i // 4 (tl.rand4x): one call serves 4 neighbours, a quarter of the Philox rounds of
    tl.rand, which would spend a call on every element and keep one output of four. Every kernel draws
    through here, so the same element gets the same uniform whichever kernel quantizes it."""
    offs4 = rows64[:, None] * (KTOT // 4) + (pid * (L // 4) + tl.arange(0, L // 4))[None, :]
    u0, u1, u2, u3 = tl.rand4x(seed, offs4.to(tl.uint32))
    # join(join(u0, u2), join(u1, u3))[..., i, j] = u_(2i + j)
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), [A, L])


@triton.jit
def _e2m1_round(mag, seed, rows64, pid, KTOT, A: tl.constexpr, L: tl.constexpr, ROUNDING: tl.constexpr):
    """(magnitude, code index) of mag [A, L/32, 32] rounded to E2M1: nearest, or stochastic with the
    uniforms _uniforms(seed, rows64, pid, KTOT, A, L)."""
    if ROUNDING == 0:
        qabs, idx = _e2m1_nearest(mag)
    else:
        qabs = _e2m1_stochastic(mag, tl.reshape(_uniforms(seed, rows64, pid, KTOT, A, L), [A, L // 32, 32]))
        idx = _e2m1_index(qabs)
    return qabs, idx


@triton.jit
def _e2m1_index(qabs):
    """The code index (0..7) of an E2M1 magnitude."""
    return tl.where(qabs < 2.0, qabs * 2.0, tl.where(qabs < 4.0, qabs + 2.0, qabs * 0.5 + 4.0)).to(tl.int32)


@triton.jit
def _quantize_kernel(
    x_ptr,
    stride_r,
    stride_k,
    signs_ptr,
    zero_ptr,
    u_ptr,
    packed_ptr,
    scales_ptr,
    fp8_ptr,
    gscale_ptr,
    count_ptr,
    rowflag_ptr,
    bf16_ptr,
    R,
    K,
    seed,
    BR: tl.constexpr,
    K_CONTIG: tl.constexpr,
    HSIZE: tl.constexpr,
    HSCALE: tl.constexpr,
    HAS_SIGNS: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    ROUNDING: tl.constexpr,
    WRITE_PACKED: tl.constexpr,
    WRITE_FP8: tl.constexpr,
    TILE: tl.constexpr,
    IN_BF16: tl.constexpr,
    HVARIANT: tl.constexpr,
    HW_CVT: tl.constexpr,
    WIDE: tl.constexpr,
    ROWFLAG: tl.constexpr,  # 1: mark rows holding deficient blocks instead of counting them (0: count)
    WRITE_BF16: tl.constexpr,
):
    BK: tl.constexpr = 128
    NB: tl.constexpr = 4
    pid_r, pid_k, rows, cols, row_ok, rows64, cols64 = _tile_coords(R, BR, BK)
    if K_CONTIG:
        x = tl.load(x_ptr + rows64[:, None] * stride_r + cols64[None, :] * stride_k, mask=row_ok[:, None], other=0.0)
    else:
        # K along the input's outer axis: load [BK, BR] coalesced along the rows, transpose in the chip
        xt = tl.load(x_ptr + cols64[:, None] * stride_k + rows64[None, :] * stride_r, mask=row_ok[None, :], other=0.0)
        x = tl.trans(xt)
    y = _widen(x, IN_BF16)
    if HAS_ZERO:
        z = tl.load(zero_ptr + rows, mask=row_ok, other=0)
        y = tl.where(z[:, None] != 0, 0.0, y)
    if HAS_SIGNS:
        s = tl.load(signs_ptr + cols)
        y = y * s[None, :]
    y = _hadamard(y, BR, BK, HSIZE, HSCALE, HVARIANT)

    # ---- MXFP4 along K, blocks of 32 (adahop.mx.quantize_blocks) ----
    y3 = tl.reshape(y, [BR, NB, 32])
    nonfinite, e, amax = _mx_exponents(y3, ROUNDING, 2)
    scaled = y3 * _pow2(-e)[:, :, None]
    mag = tl.abs(scaled)
    if ROUNDING == 0:
        qabs, idx = _e2m1_nearest(mag)
    else:
        if ROUNDING == 1:
            u = _uniforms(seed, rows64, pid_k, K, BR, BK)
        else:
            u = tl.load(u_ptr + rows64[:, None] * K + cols64[None, :], mask=row_ok[:, None], other=0.0)
        qabs = _e2m1_stochastic(mag, tl.reshape(u, [BR, NB, 32]))
        idx = _e2m1_index(qabs)
    qabs = tl.where(nonfinite[:, :, None], 0.0, qabs)
    idx = tl.where(nonfinite[:, :, None], 0, idx)
    neg = scaled < 0

    if WRITE_PACKED:
        _store_mx(packed_ptr, scales_ptr, rows64, row_ok, pid_k, K, idx, neg, e, nonfinite, BR, BK)
    if WRITE_BF16:
        _store_bf16(bf16_ptr, rows64, row_ok, cols64, K, qabs, neg, e, nonfinite, BR, BK)
    if WRITE_FP8:
        _fp8_emit(
            qabs,
            neg,
            e,
            nonfinite,
            _block_nonzero(qabs, amax, e, ROUNDING, 2),
            rows,
            pid_k,
            R,
            K,
            fp8_ptr,
            gscale_ptr,
            count_ptr,
            rowflag_ptr,
            R,
            BR,
            TILE,
            HW_CVT,
            WIDE,
            ROWFLAG,
        )


@triton.jit
def _butterfly_t(y, BK: tl.constexpr, BR: tl.constexpr, H: tl.constexpr):
    """The FWHT stage along axis 0 of a [BK, BR] tile (masked-sum form, same bits)."""
    y4 = tl.reshape(y, [BK // (2 * H), 2, H, BR])
    i = tl.arange(0, 2)[None, :, None, None]
    a = tl.sum(tl.where(i == 0, y4, 0.0), axis=1)[:, None, :, :]
    b = tl.sum(tl.where(i == 1, y4, 0.0), axis=1)[:, None, :, :]
    y4 = tl.where(i == 0, a + b, a - b)
    return tl.reshape(y4, [BK, BR])


@triton.jit
def _quantize_kernel_t(
    x_ptr,
    stride_r,
    stride_k,
    signs_ptr,
    zero_ptr,
    u_ptr,
    packed_ptr,
    scales_ptr,
    fp8_ptr,
    gscale_ptr,
    count_ptr,
    R,
    K,
    seed,
    BR: tl.constexpr,
    HSIZE: tl.constexpr,
    HSCALE: tl.constexpr,
    HAS_SIGNS: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    ROUNDING: tl.constexpr,
    WRITE_PACKED: tl.constexpr,
    WRITE_FP8: tl.constexpr,
    IN_BF16: tl.constexpr,
    HW_CVT: tl.constexpr,
    WIDE: tl.constexpr,
):
    """_quantize_kernel for K along the input's outer axis, computed in the loaded [K, rows] layout (no
    float transpose): only the uint8 outputs are transposed in the chip before the K-major stores.
    WIDE: the e5m2 form (see _fp8_emit); deficient blocks are counted (row flags: _quantize_kernel)."""
    BK: tl.constexpr = 128
    NB: tl.constexpr = 4
    pid_r, pid_k, rows, cols, row_ok, rows64, cols64 = _tile_coords(R, BR, BK)
    x = tl.load(x_ptr + cols64[:, None] * stride_k + rows64[None, :] * stride_r, mask=row_ok[None, :], other=0.0)
    y = _widen(x, IN_BF16)
    if HAS_ZERO:
        z = tl.load(zero_ptr + rows, mask=row_ok, other=0)
        y = tl.where(z[None, :] != 0, 0.0, y)
    if HAS_SIGNS:
        s = tl.load(signs_ptr + cols)
        y = y * s[:, None]
    if HSIZE >= 2:
        y = _butterfly_t(y, BK, BR, 1)
    if HSIZE >= 4:
        y = _butterfly_t(y, BK, BR, 2)
    if HSIZE >= 8:
        y = _butterfly_t(y, BK, BR, 4)
    if HSIZE >= 16:
        y = _butterfly_t(y, BK, BR, 8)
    if HSIZE >= 32:
        y = _butterfly_t(y, BK, BR, 16)
    if HSIZE >= 64:
        y = _butterfly_t(y, BK, BR, 32)
    if HSIZE >= 128:
        y = _butterfly_t(y, BK, BR, 64)
    if HSIZE >= 2:
        y = y * HSCALE

    y3 = tl.reshape(y, [NB, 32, BR])
    nonfinite, e, amax = _mx_exponents(y3, ROUNDING, 1)  # [NB, BR]
    scaled = y3 * _pow2(-e)[:, None, :]
    mag = tl.abs(scaled)
    if ROUNDING == 0:
        qabs, _ = _e2m1_nearest(mag)
    else:
        if ROUNDING == 1:  # the draws of _quantize_kernel, made along K and transposed
            u = tl.trans(_uniforms(seed, rows64, pid_k, K, BR, BK))
        else:
            u = tl.load(u_ptr + rows64[None, :] * K + cols64[:, None], mask=row_ok[None, :], other=0.0)
        qabs = _e2m1_stochastic(mag, tl.reshape(u, [NB, 32, BR]))
    qabs = tl.where(nonfinite[:, None, :], 0.0, qabs)
    neg = scaled < 0

    if WRITE_PACKED:
        idx = _e2m1_index(qabs)
        code = tl.where(neg & (idx > 0), idx | 8, idx)
        c2 = tl.reshape(code, [BK // 2, 2, BR])
        j = tl.arange(0, 2)[None, :, None]
        byte = tl.sum(tl.where(j == 0, c2, c2 << 4), axis=1).to(tl.uint8)  # lo | hi << 4
        pcols = pid_k * (BK // 2) + tl.arange(0, BK // 2)
        tl.store(packed_ptr + rows64[:, None] * (K // 2) + pcols[None, :], tl.trans(byte), mask=row_ok[:, None])
        sbyte = tl.where(nonfinite, 255, e + 127).to(tl.uint8)  # [NB, BR]
        scols = pid_k * NB + tl.arange(0, NB)
        tl.store(scales_ptr + rows64[None, :] * (K // 32) + scols[:, None], sbyte, mask=row_ok[None, :])
    if WRITE_FP8:
        HEAD: tl.constexpr = 13 if WIDE else 6
        LOW: tl.constexpr = -15 if WIDE else -8
        e_fin = tl.where(nonfinite, -127, e)
        G = tl.maximum(tl.max(e_fin, axis=0) - HEAD, -126)  # [BR]
        o = e_fin - G[None, :]
        deficient = _block_nonzero(qabs, amax, e, ROUNDING, 1) & (o < LOW) & (~nonfinite)
        o_c = tl.minimum(tl.maximum(o, LOW), HEAD)
        v = qabs * _pow2(o_c)[:, None, :]
        v = tl.where(deficient[:, None, :], 0.0, v)
        bits = tl.reshape(_fp8_bits(v, neg, nonfinite[:, None, :], HW_CVT, WIDE), [BK, BR])
        tl.store(fp8_ptr + rows64[:, None] * K + cols64[None, :], tl.trans(bits), mask=row_ok[:, None])
        tl.store(gscale_ptr + pid_k.to(tl.int64) * R + rows, _pow2(G), mask=row_ok)
        ndef = tl.sum(tl.sum(tl.where(row_ok[None, :], deficient.to(tl.int32), 0), axis=1), axis=0)
        if ndef > 0:
            tl.atomic_add(count_ptr, ndef)


@triton.jit
def _load_packed(packed_ptr, scales_ptr, src64, ok, pid_k, K, BR: tl.constexpr):
    """One [BR, 128] tile of a packed K-major operand (rows src64, masked by ok): E2M1 magnitudes
    [BR, 4, 32] as float32, their signs, block exponents [BR, 4] and non-finite (NaN-block) flags."""
    NB: tl.constexpr = 4
    pcols = pid_k * 64 + tl.arange(0, 64)
    byte = tl.load(packed_ptr + src64[:, None] * (K // 2) + pcols[None, :], mask=ok[:, None], other=0).to(tl.int32)
    code = tl.reshape(tl.join(byte & 0xF, byte >> 4), [BR, NB, 32])
    scols = pid_k * NB + tl.arange(0, NB)
    sbyte = tl.load(scales_ptr + src64[:, None] * (K // 32) + scols[None, :], mask=ok[:, None], other=0).to(tl.int32)
    idx = code & 7
    qabs = tl.where(
        idx < 4, idx.to(tl.float32) * 0.5, tl.where(idx < 6, (idx - 2).to(tl.float32), (idx - 4).to(tl.float32) * 2.0)
    )
    return qabs, (code & 8) != 0, sbyte - 127, sbyte == 255


@triton.jit
def _reencode_kernel(
    packed_ptr,
    scales_ptr,
    fp8_ptr,
    gscale_ptr,
    count_ptr,
    R,
    K,
    BR: tl.constexpr,
    TILE: tl.constexpr,
    HW_CVT: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Saved packed MXFP4 ([R, K/2] codes + [R, K/32] scales, K-major) -> fp8 e4m3 (e5m2 if WIDE) + group
    scales."""
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    row_ok = rows < R
    qabs, neg, e, nonfinite = _load_packed(packed_ptr, scales_ptr, rows.to(tl.int64), row_ok, pid_k, K, BR)
    _fp8_emit(
        qabs,
        neg,
        e,
        nonfinite,
        tl.max(qabs, axis=2) > 0,
        rows,
        pid_k,
        R,
        K,
        fp8_ptr,
        gscale_ptr,
        count_ptr,
        count_ptr,
        R,
        BR,
        TILE,
        HW_CVT,
        WIDE,
        0,
    )


@triton.jit
def _row_split_kernel(
    packed_ptr,
    scales_ptr,
    rows_ptr,
    NSEL,
    K,
    hi_ptr,
    hi_gscale_ptr,
    lo_ptr,
    lo_gscale_ptr,
    count_ptr,
    BR: tl.constexpr,
    HW_CVT: tl.constexpr,
):
    """For the NSEL selected rows of a packed K-major operand, the wide (e5m2) fp8 form in two exact parts,
    stacked in one [2 NSEL, K] operand (hi rows first) with its [K/128, 2 NSEL] scales, so that one GEMM
    multiplies both (lo_ptr / lo_gscale_ptr point into the same tensors, offset on the host, where the
    offset NSEL * K may pass 2^31): hi = the blocks the ordinary wide form holds (deficient ones zero),
    lo = only those deficient blocks, with group scales of their own. hi + lo is every value of the rows;
    blocks the lo part cannot hold either (more than 28 below the lo part's own maximum) are counted."""
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    sel = pid_r * BR + tl.arange(0, BR)
    sel_ok = sel < NSEL
    src = tl.load(rows_ptr + sel, mask=sel_ok, other=0).to(tl.int64)
    qabs, neg, e, nonfinite = _load_packed(packed_ptr, scales_ptr, src, sel_ok, pid_k, K, BR)
    nonzero = tl.max(qabs, axis=2) > 0
    _fp8_emit(
        qabs,
        neg,
        e,
        nonfinite,
        nonzero,
        sel,
        pid_k,
        NSEL,
        K,
        hi_ptr,
        hi_gscale_ptr,
        count_ptr,
        count_ptr,
        2 * NSEL,
        BR,
        False,
        HW_CVT,
        True,
        2,
    )  # its deficient blocks go to the lo part
    e_fin = tl.where(nonfinite, -127, e)
    G = tl.maximum(tl.max(e_fin, axis=1) - 13, -126)
    deficient = nonzero & (e_fin - G[:, None] < -15) & (~nonfinite)
    qlo = tl.where(deficient[:, :, None], qabs, 0.0)
    elo = tl.where(deficient, e, -127)
    _fp8_emit(
        qlo,
        neg,
        elo,
        deficient & nonfinite,
        tl.max(qlo, axis=2) > 0,
        sel,
        pid_k,
        NSEL,
        K,
        lo_ptr,
        lo_gscale_ptr,
        count_ptr,
        count_ptr,
        2 * NSEL,
        BR,
        False,
        HW_CVT,
        True,
        0,
    )


# ----------------------------------------------------------------------------------------------------
# Python wrappers


def hadamard_scale(block: int) -> float:
    """The float32 constant 1/sqrt(block) of adahop.hadamard, as an exactly representable Python float."""
    return struct.unpack("f", struct.pack("f", 1.0 / math.sqrt(block)))[0]


def _block_rows(k_contig: bool, tile: bool) -> tuple[int, int]:
    """(rows per program, warps) of a quantize launch, from the active state's launch choices
    (adahop.kernels.state.DEFAULT_TUNING says what each entry means)."""
    tuning = active().tuning
    if tile:
        return tuning["tile" if k_contig else "tile_strided"]
    return tuning["contig"] if k_contig else tuning["strided"]


# Read once: triton.jit decides at decoration (import) whether the kernels are interpreted, and a lookup
# per launch would be a measurable part of the host's time per GEMM.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _hw_cvt(t: torch.Tensor) -> bool:
    return t.is_cuda and not _INTERPRETED


def _hadamard_block(hadamard_size: int | None) -> int:
    """The Hadamard block size a kernel takes (0: none), refused if the kernels cannot do it."""
    h = hadamard_size or 0
    if h and (h > MAX_HADAMARD or GROUP % h != 0):
        raise ValueError(f"the fused quantizer handles Hadamard blocks up to {MAX_HADAMARD}, got {h}")
    return h


def _signs_on(signs: torch.Tensor | None, n: int, dev: torch.device, name: str = "signs") -> torch.Tensor | None:
    """The random signs as the kernels read them (float32, contiguous, on `dev`), refused unless [n]."""
    if signs is None:
        return None
    signs = signs.to(device=dev, dtype=torch.float32).contiguous()
    if signs.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(signs.shape)}")
    return signs


def _count_buffer(dev: torch.device) -> torch.Tensor:
    """Where a kernel adds its deficient-block count: the step's shared counter inside
    adahop.kernels.deferred.deferred_check, else a fresh one for this operand."""
    shared = counter_for(dev)
    return shared if shared is not None else torch.zeros(1, dtype=torch.int32, device=dev)


@torch.compiler.disable
def fused_quantize(
    t: torch.Tensor,
    *,
    k_dim: int = 1,
    hadamard_size: int | None = None,
    signs: torch.Tensor | None = None,
    rounding: str = "nearest",
    zero_rows: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
    seed: int = 0,
    write_packed: bool = True,
    write_fp8: bool = True,
    tile: bool = False,
    wide: bool = False,
    row_flags: bool = False,
    count: torch.Tensor | None = None,
    write_bf16: bool = False,
) -> dict:
    """Quantize a 2-D operand along K (dim `k_dim`) in one pass. Returns a dict of K-major outputs:
    packed [R, K/2] uint8, scales [R, K/32] uint8, fp8 [R, K] float8_e4m3fn (float8_e5m2 with `wide`),
    gscale fp32 ([K/128, R], or [R/128, K/128] with `tile`), count (int32 [1]: deficient blocks, written
    as zero in the fp8 form), and with `write_bf16` bf16 [R, K]: the MXFP4 values themselves (what the packed
    form dequantizes to). With `row_flags` (needs write_fp8) deficient blocks are not counted but their
    rows marked in row_flags (uint8 [R], 1 = the row holds one), for the GEMM's exact row recomputation.

    rounding "stochastic" draws its uniforms from `uniforms` (float32 [R, K], K-major) when given,
    else from Philox with `seed`. `count`: the int32 [1] buffer the deficient blocks are added to (default: the
    step's shared counter inside a deferred check, else a fresh one)."""
    if t.dim() != 2 or k_dim not in (0, 1):
        raise ValueError(f"expected a 2-D tensor and k_dim in (0, 1), got {tuple(t.shape)}, {k_dim}")
    K = t.shape[k_dim]
    R = t.shape[1 - k_dim]
    if K % GROUP != 0:
        raise ValueError(f"the fused quantizer needs K % {GROUP} == 0, got K={K}")
    if row_flags and not (write_fp8 and write_packed):
        raise ValueError(
            "row_flags marks the rows the fp8 form cannot hold for the GEMM to recompute from the "
            "packed form: it needs write_fp8=True and write_packed=True"
        )
    if tile and R % 128 != 0:
        raise ValueError(f"128x128 tile scales need rows % 128 == 0, got {R}")
    hsize = _hadamard_block(hadamard_size)
    if k_dim == 1 and t.stride(1) != 1 and t.stride(0) == 1 and R > 1:
        t, k_dim = t.t(), 0  # a transposed view: read it along its contiguous axis
    dev = t.device
    k_contig = k_dim == 1
    stride_r = t.stride(1 - k_dim)
    stride_k = t.stride(k_dim)
    count = _count_buffer(dev) if count is None else count
    packed = scales = fp8 = gscale = count  # the pointers of outputs not written (no allocation for them)
    if write_packed:
        packed = torch.empty((R, K // 2), dtype=torch.uint8, device=dev)
        scales = torch.empty((R, K // 32), dtype=torch.uint8, device=dev)
    if write_fp8:
        fp8 = torch.empty((R, K), dtype=torch.uint8, device=dev)
        gscale = torch.empty((R // 128, K // GROUP) if tile else (K // GROUP, R), dtype=torch.float32, device=dev)
    flags = torch.zeros(R, dtype=torch.uint8, device=dev) if row_flags else count
    bf16 = torch.empty((R, K), dtype=torch.int16, device=dev) if write_bf16 else count
    if rounding == "nearest":
        mode = ROUND_NEAREST
    elif rounding == "stochastic":
        mode = ROUND_SR_GIVEN if uniforms is not None else ROUND_SR_PHILOX
    else:
        raise ValueError(f"rounding={rounding!r} is not supported")
    if uniforms is not None:
        uniforms = uniforms.to(device=dev, dtype=torch.float32).contiguous()
        if uniforms.shape != (R, K):
            raise ValueError(f"uniforms must be [R, K] = {(R, K)}, got {tuple(uniforms.shape)}")
    zero = None
    if zero_rows is not None and zero_rows.numel() > 0:
        zero = torch.zeros(R, dtype=torch.int8, device=dev).index_fill_(0, zero_rows.to(dev), 1)
    signs = _signs_on(signs, K, dev)
    br, warps = _block_rows(k_contig, tile)
    dummy = count
    strided_kernel = active().tuning["strided_kernel"]
    if strided_kernel == "auto":
        strided_kernel = "trans" if hsize else "t"
    if not k_contig and not tile and strided_kernel == "t" and not row_flags and not write_bf16:
        br, warps = active().tuning["strided_t"]
        _quantize_kernel_t[(triton.cdiv(R, br), K // GROUP)](
            t.view(torch.int16) if t.dtype == torch.bfloat16 else t,
            stride_r,
            stride_k,
            signs if signs is not None else dummy,
            zero if zero is not None else dummy,
            uniforms if uniforms is not None else dummy,
            packed,
            scales,
            fp8,
            gscale,
            count,
            R,
            K,
            int(seed) & 0x7FFFFFFF,
            BR=br,
            HSIZE=hsize,
            HSCALE=hadamard_scale(hsize) if hsize else 1.0,
            HAS_SIGNS=signs is not None,
            HAS_ZERO=zero is not None,
            ROUNDING=mode,
            WRITE_PACKED=write_packed,
            WRITE_FP8=write_fp8,
            IN_BF16=t.dtype == torch.bfloat16,
            HW_CVT=_hw_cvt(t),
            WIDE=wide,
            num_warps=warps,
        )
        return _outputs(write_packed, write_fp8, packed, scales, fp8, gscale, count, wide, None)
    grid = (triton.cdiv(R, br), K // GROUP)
    _quantize_kernel[grid](
        t.view(torch.int16) if t.dtype == torch.bfloat16 else t,
        stride_r,
        stride_k,
        signs if signs is not None else dummy,
        zero if zero is not None else dummy,
        uniforms if uniforms is not None else dummy,
        packed,
        scales,
        fp8,
        gscale,
        count,
        flags,
        bf16,
        R,
        K,
        int(seed) & 0x7FFFFFFF,
        BR=br,
        K_CONTIG=k_contig,
        HSIZE=hsize,
        HSCALE=hadamard_scale(hsize) if hsize else 1.0,
        HAS_SIGNS=signs is not None,
        HAS_ZERO=zero is not None,
        ROUNDING=mode,
        WRITE_PACKED=write_packed,
        WRITE_FP8=write_fp8,
        TILE=tile,
        IN_BF16=t.dtype == torch.bfloat16,
        HVARIANT=active().tuning["hv_contig" if k_contig else "hv_strided"],
        HW_CVT=_hw_cvt(t),
        WIDE=wide,
        ROWFLAG=1 if row_flags else 0,
        WRITE_BF16=write_bf16,
        num_warps=warps,
    )
    out = _outputs(write_packed, write_fp8, packed, scales, fp8, gscale, count, wide, flags if row_flags else None)
    if write_bf16:
        out["bf16"] = bf16.view(torch.bfloat16)
    return out


def _outputs(write_packed, write_fp8, packed, scales, fp8, gscale, count, wide, flags) -> dict:
    out = {"count": count}
    if write_packed:
        out["packed"], out["scales"] = packed, scales
    if write_fp8:
        out["fp8"], out["gscale"] = fp8.view(fp8_dtype(wide)), gscale
    if flags is not None:
        out["row_flags"] = flags
    return out


@torch.compiler.disable
def fused_reencode(packed: torch.Tensor, scales: torch.Tensor, *, tile: bool = False, wide: bool = False) -> dict:
    """fp8 form of a saved K-major packed operand (packed [R, K/2], scales [R, K/32]); e5m2 with `wide`."""
    R, K = packed.shape[0], packed.shape[1] * 2
    if K % GROUP != 0 or scales.shape != (R, K // 32):
        raise ValueError(
            f"re-encode needs K % {GROUP} == 0 and scales [R, K/32]; got {tuple(packed.shape)}, {tuple(scales.shape)}"
        )
    if tile and R % 128 != 0:
        raise ValueError(f"128x128 tile scales need rows % 128 == 0, got {R}")
    dev = packed.device
    fp8 = torch.empty((R, K), dtype=torch.uint8, device=dev)
    gscale = torch.empty((R // 128, K // GROUP) if tile else (K // GROUP, R), dtype=torch.float32, device=dev)
    count = _count_buffer(dev)
    br, warps = active().tuning["tile" if tile else "reencode"]
    grid = (triton.cdiv(R, br), K // GROUP)
    _reencode_kernel[grid](
        packed.contiguous(),
        scales.contiguous(),
        fp8,
        gscale,
        count,
        R,
        K,
        BR=br,
        TILE=tile,
        HW_CVT=_hw_cvt(packed),
        WIDE=wide,
        num_warps=warps,
    )
    return {"fp8": fp8.view(fp8_dtype(wide)), "gscale": gscale, "count": count}


@torch.compiler.disable
def fused_row_split(packed: torch.Tensor, scales: torch.Tensor, rows: torch.Tensor, count: torch.Tensor) -> dict:
    """The wide fp8 form of `rows` (int64 [n]) of a packed K-major operand in two exact parts (see
    _row_split_kernel): both = hi rows then lo rows, fp8 e5m2 [2n, K] with both_gscale [K/128, 2n] (one
    GEMM operand), and hi / lo / hi_gscale / lo_gscale, their views; blocks neither part holds are added
    to `count`."""
    K = packed.shape[1] * 2
    n = rows.numel()
    dev = packed.device
    both = torch.empty((2 * n, K), dtype=torch.uint8, device=dev)
    both_gs = torch.empty((K // GROUP, 2 * n), dtype=torch.float32, device=dev)
    lo, lo_gs = both[n:], both_gs[:, n:]
    br, warps = active().tuning["reencode"]
    _row_split_kernel[(triton.cdiv(n, br), K // GROUP)](
        packed, scales, rows, n, K, both, both_gs, lo, lo_gs, count, BR=br, HW_CVT=_hw_cvt(packed), num_warps=warps
    )
    e5 = fp8_dtype(True)
    both = both.view(e5)
    return {
        "both": both,
        "both_gscale": both_gs,
        "hi": both[:n],
        "hi_gscale": both_gs[:, :n],
        "lo": lo.view(e5),
        "lo_gscale": lo_gs,
    }


# ----------------------------------------------------------------------------------------------------
# torch restatement of the fp8 re-encoding (tests, and locating deficient blocks on the rare path)


def block_exponents(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 exponents with non-finite blocks at -127, non-finite mask) of E8M0 scale bytes [R, K/32]."""
    nonfinite = scales == 255
    e = scales.to(torch.int32) - 127
    return torch.where(nonfinite, torch.full_like(e, -127), e), nonfinite


def group_exponents(scales: torch.Tensor, tile: bool = False, wide: bool = False) -> torch.Tensor:
    """G per 1x128 group ([R, K/128]) or per 128x128 tile ([R/128, K/128]) of a K-major operand."""
    e, _ = block_exponents(scales)
    R, nb = e.shape
    gmax = e.view(R, nb // 4, 4).amax(-1)
    if tile:
        gmax = gmax.view(R // 128, 128, nb // 4).amax(1)
    return torch.clamp(gmax - fp8_window(wide)[1], min=-126)


def deficient_blocks(
    packed: torch.Tensor, scales: torch.Tensor, tile: bool = False, wide: bool = False
) -> torch.Tensor:
    """bool [R, K/32]: nonzero finite blocks whose exponent sits more than 14 (wide: 28) below the group
    maximum (the blocks the fp8 form holds as zero)."""
    e, nonfinite = block_exponents(scales)
    G = group_exponents(scales, tile, wide)
    if tile:
        G = G.repeat_interleave(128, 0)
    G = G.repeat_interleave(4, 1)
    R = packed.shape[0]
    nonzero = ((packed & 0x77) != 0).view(R, -1, 16).any(-1)
    return nonzero & ~nonfinite & ((e - G) < fp8_window(wide)[0])


def reference_fp8(
    packed: torch.Tensor, scales: torch.Tensor, tile: bool = False, wide: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3 (wide: e5m2) [R, K] as uint8 bits, gscale fp32 like the kernels') computed in torch from
    packed MXFP4."""
    from ..mx.format import e2m1_values, unpack_nibbles

    R = packed.shape[0]
    codes = unpack_nibbles(packed)
    q = e2m1_values(codes).view(R, -1, 32)
    e, nonfinite = block_exponents(scales)
    G = group_exponents(scales, tile, wide)
    Gfull = (G.repeat_interleave(128, 0) if tile else G).repeat_interleave(4, 1)
    o = (e - Gfull).clamp(*fp8_window(wide))
    v = torch.ldexp(q, o.unsqueeze(-1).to(torch.float32))
    bits = v.to(fp8_dtype(wide)).view(torch.uint8)  # exact: v is representable
    bits = torch.where(v == 0, torch.zeros_like(bits), bits)  # -0 -> code 0
    defi = deficient_blocks(packed, scales, tile, wide)
    bits = torch.where(defi.unsqueeze(-1), torch.zeros_like(bits), bits)
    bits = torch.where(nonfinite.unsqueeze(-1), torch.full_like(bits, FP8_NAN_BITS), bits)
    gscale = torch.ldexp(torch.ones_like(G, dtype=torch.float32), G.to(torch.float32))
    return bits.view(R, -1), (gscale if tile else gscale.t().contiguous())


def reference_row_split(packed: torch.Tensor, scales: torch.Tensor, rows: torch.Tensor) -> dict:
    """torch restatement of fused_row_split (uint8 bits): hi = the wide fp8 form of the rows, lo = the
    wide fp8 form of only their deficient blocks; beyond = blocks neither holds."""
    p, sc = packed[rows], scales[rows]
    hi, hi_gs = reference_fp8(p, sc, wide=True)
    defi = deficient_blocks(p, sc, wide=True)
    p_lo = torch.where(defi.repeat_interleave(16, 1), p, torch.zeros_like(p))
    s_lo = torch.where(defi, sc, torch.zeros_like(sc))  # byte 0: exponent -127, holds nothing here
    lo, lo_gs = reference_fp8(p_lo, s_lo, wide=True)
    return {
        "hi": hi,
        "hi_gscale": hi_gs,
        "lo": lo,
        "lo_gscale": lo_gs,
        "beyond": int(deficient_blocks(p_lo, s_lo, wide=True).sum()),
    }
