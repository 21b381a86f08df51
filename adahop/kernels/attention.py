"""Flash-style MXFP4 attention (Triton), forward and backward: the GPU path of adahop.attention.

The torch reference is `adahop.attention.attention_forward` / `attention_backward`, which materialize the
[Tq, Tk] probabilities. These kernels never do (memory O(T)), and give the reference's quantized operands bit
for bit:

- the operands that are quantized along head_dim (with the Hadamard) or along the sequence are written once,
  as bf16 (float32 under Triton's interpreter), by `_operand_kernel` (every MXFP4 value of a block exponent in
  [-127, 127] is a bf16 value, so a bf16 tensor-core dot of two of them, accumulated in float32, is the
  reference's float32 product up to the order of the sum);
- E (P before normalization), P and the score gradient dS are quantized inside the kernels, tile by tile, by
  `_fake_quantize` (blocks of 32 along the tile's last axis; tiles start at multiples of 32), E and P by its
  form for values in [0, 2], `_fake_quantize_probabilities` (the same values in fewer instructions);
- only the tiles that cross the causal diagonal or the end of the sequence are masked: the kernels are bound by
  their per-element instructions, not by bytes or tensor cores (docs/kernels.md).

The reference quantizes E = 2^(S log2(e) - M) along keys, with an integer stabilizer M, and divides q(E) V by
the sum of q(E): both commute with a power of two, so the forward makes one pass over the keys, keeping M at the
ceiling of the running max and rescaling its sums by 2^(M_old - M_new) (exact, down to 2^-126) when it grows.
The backward's rowsum(dO * O), the gradient through that sum, is computed by the dQ kernel from dO and O (one row
tile each) and stored for the dK/dV kernel. Masked scores contribute nothing to any sum, whatever dP holds there
(a NaN in a query row reaches dV only of the keys that row sees, and that row's dQ).

Stochastic rounding (use_sr_grad) draws its uniforms from Philox (`tl.rand`, seeded per call): the same
distribution as the reference, not the same draws. `_operand_kernel` can also read given uniforms, which is how
the tests compare the quantizer with the reference draw for draw.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adahop.mx.format import BLOCK_SIZE

from .quantize import (
    _INTERPRETED,
    _e2m1_nearest,
    _e2m1_stochastic,
    _hadamard,
    _mx_exponents,
    _pow2,
    _scaled,
    hadamard_scale,
)

ROUND_NEAREST, ROUND_SR_PHILOX, ROUND_SR_GIVEN = 0, 1, 2  # `rounding` of the kernels

# Tiles (rows x keys) and warps. Every tile edge is a multiple of 32, so that each 32-block of P and dS lies
# in one tile and starts where the reference's does.
FORWARD_TILES = (128, 64, 8)  # (query rows, keys, warps)
# The backward's tiles are the fastest of an H100 sweep (docs/benchmarks.md, MXFP4 attention); with stochastic
# rounding the Philox draws need registers that those tiles do not leave (they would spill at head_dim 128:
# tests/kernels/compile_sm90.py), hence smaller ones.
DQ_TILES = (128, 64, 8)  # (query rows, keys, warps)
DQ_TILES_SR = (64, 32, 4)
DKDV_TILES = (32, 128, 8)  # (queries, key rows, warps)
DKDV_TILES_SR = (32, 64, 8)
OPERAND_ROWS = 64
# The quantized operands' dtype: bf16 for the tensor cores; float32 (the same values) under Triton's interpreter,
# which has no bf16 arithmetic. Read once: triton.jit decides at import whether the kernels are interpreted.
OPERAND_DTYPE = torch.float32 if _INTERPRETED else torch.bfloat16
# log2(e): the kernels take scores to base 2, t = S log2(e), as adahop.attention does; each kernel multiplies the
# float32 scale by it in float32, so that the backward recomputes the forward's t bit for bit
LOG2E_FP32 = tl.constexpr(1.4426950408889634)


@triton.jit
def _fake_quantize(y, u, R: tl.constexpr, C: tl.constexpr, ROUNDING: tl.constexpr):
    """The MXFP4 values (float32) of y [R, C] quantized in blocks of 32 along C, as
    adahop.mx.fake_quantize_mxfp4 gives them: nearest (ROUNDING 0) or stochastic with uniforms u [R, C]."""
    y3 = tl.reshape(y, [R, C // 32, 32])
    nonfinite, e, amax = _mx_exponents(y3, ROUNDING, 2)
    mag = tl.abs(y3) * _pow2(-e)[:, :, None]  # exact: a power of two, e in [-127, 125]
    if ROUNDING == 0:
        qabs, idx = _e2m1_nearest(mag)
    else:
        qabs = _e2m1_stochastic(mag, tl.reshape(u, [R, C // 32, 32]))
    val = _scaled(qabs, e)
    val = tl.where(y3 < 0, -val, val)
    val = tl.where(nonfinite[:, :, None], float("nan"), val)
    return tl.reshape(val, [R, C])


@triton.jit
def _fake_quantize_probabilities(y, R: tl.constexpr, C: tl.constexpr):
    """_fake_quantize(y, ., R, C, 0) for y >= 0 below 2^100: E (at most 1) and P (at most 2, since the row sum
    holds the quantized largest E, at least 1/2). The same values in fewer instructions: each element is rounded
    on its block's own scale, by adding 2^(e + 22), 2^(e + 23) or 2^(e + 24), whose ulp is the grid step there
    (_e2m1_nearest's constants times 2^e: exact, since a power of two commutes with rounding and 2^(e + 22) is a
    normal float for every e >= -127), so that no element is scaled to the grid and back, and no sign is kept."""
    y3 = tl.reshape(y, [R, C // 32, 32])
    amax_bits = tl.max(y3.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2)  # a NaN may carry a sign bit
    nonfinite = amax_bits >= 0x7F800000
    e = tl.maximum((amax_bits >> 23) - 129, -127)  # as _mx_exponents
    two, four = _pow2(e + 1)[:, :, None], _pow2(e + 2)[:, :, None]
    magic = tl.where(
        y3 < two,
        _pow2(e + 22)[:, :, None],
        tl.where(y3 < four, _pow2(e + 23)[:, :, None], _pow2(e + 24)[:, :, None]),
    )
    val = tl.minimum((y3 + magic) - magic, 1.5 * four)  # saturating at 6 * 2^e
    val = tl.where(nonfinite[:, :, None], float("nan"), val)
    return tl.reshape(val, [R, C])


@triton.jit
def _operand_kernel(
    x_ptr,
    u_ptr,
    us_ptr,
    out_ptr,
    seq_ptr,
    T,
    D,
    H,
    sxb,
    sxh,
    sxt,
    sxd,
    seed,
    seed_s,
    BT: tl.constexpr,
    DP: tl.constexpr,
    HSIZE: tl.constexpr,
    HSCALE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SEQUENCE: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    # one program: BT positions x all of head_dim (DP: head_dim padded to a power of two) of one (batch, head);
    # writes x quantized along head_dim after the Hadamard (HEAD_DIM, to out), along the sequence (SEQUENCE, to
    # seq), or both from one read
    bh = tl.program_id(1)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    d = tl.arange(0, DP)
    inside = (t[:, None] < T) & (d[None, :] < D)
    src = (bh // H).to(tl.int64) * sxb + (bh % H).to(tl.int64) * sxh + t[:, None].to(tl.int64) * sxt
    src += d[None, :].to(tl.int64) * sxd
    x = tl.load(x_ptr + src, mask=inside, other=0.0).to(tl.float32)
    dst = (bh.to(tl.int64) * T + t[:, None]) * D + d[None, :]  # contiguous [B, H, T, D]
    if SEQUENCE:
        u = _operand_uniforms(x, us_ptr, dst, inside, seed_s + bh, t, d, D, ROUNDING)
        v = tl.trans(_fake_quantize(tl.trans(x), tl.trans(u), DP, BT, ROUNDING))
        tl.store(seq_ptr + dst, v.to(seq_ptr.dtype.element_ty), mask=inside)
    if HEAD_DIM:
        if HSIZE >= 2:
            x = _hadamard(x, BT, DP, HSIZE, HSCALE, 2)
        u = _operand_uniforms(x, u_ptr, dst, inside, seed + bh, t, d, D, ROUNDING)
        tl.store(out_ptr + dst, _fake_quantize(x, u, BT, DP, ROUNDING).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _operand_uniforms(x, u_ptr, dst, inside, seed, t, d, D, ROUNDING: tl.constexpr):
    """The operand kernel's uniforms: read (ROUNDING 2), Philox's (1), or none (x, unused: nearest)."""
    if ROUNDING == 2:
        u = tl.load(u_ptr + dst, mask=inside, other=0.0)
    elif ROUNDING == 1:
        u = tl.rand(seed, t[:, None].to(tl.int64) * D + d[None, :])
    else:
        u = x
    return u


@triton.jit
def _scores(q, k_ptr, rows, start, scale, TK, D, masked, BN: tl.constexpr, DP: tl.constexpr, CAUSAL: tl.constexpr):
    """S = q k^T * scale for the keys start.. start + BN ([BM, BN] float32); where `masked`, -inf where a key is masked
    (past TK, or after the row's query under top-left causal alignment, as SDPA's is_causal). Tiles that every
    row sees whole need no mask (_full_tiles_end): `masked` is a runtime flag, so that one loop serves both (a loop
    of each kept more registers live: the dK/dV kernel spilled)."""
    cols = start + tl.arange(0, BN)
    d = tl.arange(0, DP)
    kt = tl.load(k_ptr + cols[None, :] * D + d[:, None], mask=(cols[None, :] < TK) & (d[:, None] < D), other=0.0)
    s = tl.dot(q, kt) * scale
    if masked:
        s = tl.where(_visible(rows[:, None], cols[None, :], TK, CAUSAL), s, float("-inf"))
    return s


@triton.jit
def _visible(rows, cols, TK, CAUSAL: tl.constexpr):
    """Where query `rows` sees key `cols` (broadcast against each other): inside TK, and not after the row under
    causal alignment."""
    keep = cols < TK
    if CAUSAL:
        keep = keep & (cols <= rows)
    return keep


@triton.jit
def _full_tiles_end(first_row, TK, BN: tl.constexpr, CAUSAL: tl.constexpr):
    """Where the key tiles that rows first_row.. (a multiple of BN) see whole end: every tile before it lies inside
    TK and, under causal alignment, before first_row."""
    end = (TK // BN) * BN
    if CAUSAL:
        end = tl.minimum(end, (first_row // BN) * BN)
    return end


@triton.jit
def _tile(ptr, first, T, D, BT: tl.constexpr, DP: tl.constexpr):
    """Rows first.. first + BT of a contiguous [T, D] matrix as [BT, DP] (zeros outside)."""
    t = first + tl.arange(0, BT)
    d = tl.arange(0, DP)
    return tl.load(ptr + t[:, None] * D + d[None, :], mask=(t[:, None] < T) & (d[None, :] < D), other=0.0)


@triton.jit
def _tile_t(ptr, first, T, D, BT: tl.constexpr, DP: tl.constexpr):
    """The same rows transposed, [DP, BT]."""
    t = first + tl.arange(0, BT)
    d = tl.arange(0, DP)
    return tl.load(ptr + t[None, :] * D + d[:, None], mask=(t[None, :] < T) & (d[:, None] < D), other=0.0)


@triton.jit
def _row_stats(stats_ptr, bh, rows, TQ):
    """Each row's stabilizer M and sum L, as the forward stored them (1 past TQ: no NaN)."""
    stats = stats_ptr + (bh.to(tl.int64) * TQ + rows) * 2
    return tl.load(stats, mask=rows < TQ, other=0.0), tl.load(stats + 1, mask=rows < TQ, other=1.0)


@triton.jit
def _kv_head(bh, HQ, REP):
    """The (batch, key/value head) index of query head bh under GQA (REP query heads per key/value head)."""
    return (bh // HQ) * (HQ // REP) + (bh % HQ) // REP


@triton.jit
def _forward_step(
    q,
    k_ptr,
    v_ptr,
    rows,
    start,
    scale,
    TK,
    D,
    m,
    acc,
    total,
    masked,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One key tile of the forward's pass: (M, sum of q(E) V, sum of q(E)) after the keys start.. start + BN."""
    t = _scores(q, k_ptr, rows, start, scale * LOG2E_FP32, TK, D, masked, BN, DP, CAUSAL)
    m_new = tl.maximum(m, tl.ceil(tl.max(t, 1)))
    grow = m - m_new  # 0, a negative integer, or -inf before the first tile
    alpha = tl.where(grow < -126.0, 0.0, _pow2(tl.maximum(grow, -126.0).to(tl.int32)))
    eq = _fake_quantize_probabilities(tl.exp2(t - m_new[:, None]), BM, BN)
    total = total * alpha + tl.sum(eq, 1)
    acc = tl.dot(eq.to(v_ptr.dtype.element_ty), _tile(v_ptr, start, TK, D, BN, DP), acc * alpha[:, None])
    return m_new, acc, total


@triton.jit
def _forward_kernel(
    qh_ptr,
    kh_ptr,
    vq_ptr,
    o_ptr,
    stats_ptr,
    scale,
    TQ,
    TK,
    D,
    HQ,
    REP,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    q_ptr = qh_ptr + bh.to(tl.int64) * TQ * D
    kv = _kv_head(bh, HQ, REP).to(tl.int64) * TK * D
    q = _tile(q_ptr, pid_m * BM, TQ, D, BM, DP)
    end = TK
    if CAUSAL:
        end = tl.minimum(TK, (pid_m + 1) * BM)
    # one pass: E = 2^(t - M) quantized along keys, times V quantized along keys, and the sum of q(E); M is the
    # ceiling of the running max of t = S log2(e), and the sums so far are rescaled by the power of two
    # 2^(M_old - M_new) when it grows (exact: quantization commutes with it, module docstring)
    m = tl.full([BM], float("-inf"), tl.float32)
    acc = tl.zeros([BM, DP], tl.float32)
    total = tl.zeros([BM], tl.float32)
    full = _full_tiles_end(pid_m * BM, TK, BN, CAUSAL)
    for start in range(0, end, BN):
        m, acc, total = _forward_step(q, kh_ptr + kv, vq_ptr + kv, rows, start, scale, TK, D, m, acc, total,
                                      start >= full, BM, BN, DP, CAUSAL)  # fmt: skip
    acc = acc / total[:, None]
    d = tl.arange(0, DP)
    out = (rows[:, None] < TQ) & (d[None, :] < D)
    o_ptr += bh.to(tl.int64) * TQ * D
    tl.store(o_ptr + rows[:, None] * D + d[None, :], acc.to(o_ptr.dtype.element_ty), mask=out)
    stats = stats_ptr + (bh.to(tl.int64) * TQ + rows) * 2
    tl.store(stats, m, mask=rows < TQ)
    tl.store(stats + 1, total, mask=rows < TQ)


@triton.jit
def _dq_step(
    q,
    do,
    k_ptr,
    vh_ptr,
    kq_ptr,
    rows,
    start,
    scale,
    seed,
    TK,
    D,
    m,
    total,
    delta,
    acc,
    masked,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    CAUSAL: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    """One key tile of the dQ kernel's pass: the sum of q(dS) K q after the keys start.. start + BN."""
    t = _scores(q, k_ptr, rows, start, scale * LOG2E_FP32, TK, D, masked, BN, DP, CAUSAL)
    dp = tl.dot(do, _tile_t(vh_ptr, start, TK, D, BN, DP))
    cols = start + tl.arange(0, BN)
    ds = tl.exp2(t - m[:, None]) / total[:, None] * (dp - delta[:, None])
    if masked:
        # the mask itself, not t > -inf, which a NaN score would fail: a NaN row's dQ is NaN, as the reference's
        ds = tl.where(_visible(rows[:, None], cols[None, :], TK, CAUSAL), ds, 0.0)
    u = ds
    if ROUNDING != 0:
        u = tl.rand(seed, rows[:, None].to(tl.int64) * TK + cols[None, :])
    dsq = _fake_quantize(ds, u, BM, BN, ROUNDING).to(kq_ptr.dtype.element_ty)
    return tl.dot(dsq, _tile(kq_ptr, start, TK, D, BN, DP), acc)


@triton.jit
def _dq_kernel(
    qh_ptr,
    kh_ptr,
    doh_ptr,
    vh_ptr,
    kq_ptr,
    do_ptr,
    o_ptr,
    stats_ptr,
    delta_ptr,
    dq_ptr,
    scale,
    seed,
    TQ,
    TK,
    D,
    HQ,
    REP,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    CAUSAL: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    q_off = bh.to(tl.int64) * TQ * D
    kv = _kv_head(bh, HQ, REP).to(tl.int64) * TK * D
    q = _tile(qh_ptr + q_off, pid_m * BM, TQ, D, BM, DP)
    do = _tile(doh_ptr + q_off, pid_m * BM, TQ, D, BM, DP)
    m, total = _row_stats(stats_ptr, bh, rows, TQ)
    # delta = rowsum(dO * O) from the unquantized dO and the forward's O (adahop.attention.output_dot)
    o_rows = _tile(o_ptr + q_off, pid_m * BM, TQ, D, BM, DP).to(tl.float32)
    delta = tl.sum(_tile(do_ptr + q_off, pid_m * BM, TQ, D, BM, DP).to(tl.float32) * o_rows, 1)
    # dS = P (dP - delta), dP from the quantized dO and V; dS quantized along keys, times K quantized along keys
    acc = tl.zeros([BM, DP], tl.float32)
    end = TK
    if CAUSAL:
        end = tl.minimum(TK, (pid_m + 1) * BM)
    full = _full_tiles_end(pid_m * BM, TK, BN, CAUSAL)
    for start in range(0, end, BN):
        acc = _dq_step(q, do, kh_ptr + kv, vh_ptr + kv, kq_ptr + kv, rows, start, scale, seed + bh, TK, D, m, total,
                       delta, acc, start >= full, BM, BN, DP, CAUSAL, ROUNDING)  # fmt: skip
    d = tl.arange(0, DP)
    out = (rows[:, None] < TQ) & (d[None, :] < D)
    tl.store(dq_ptr + q_off + rows[:, None] * D + d[None, :], (acc * scale).to(dq_ptr.dtype.element_ty), mask=out)
    tl.store(delta_ptr + bh.to(tl.int64) * TQ + rows, delta, mask=rows < TQ)


@triton.jit
def _dkdv_step(
    k,
    v,
    qh_ptr,
    doh_ptr,
    qq_ptr,
    doq_ptr,
    stats_ptr,
    delta_ptr,
    bh,
    cols,
    start,
    scale,
    seed,
    TQ,
    TK,
    D,
    dk,
    dv,
    masked,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    CAUSAL: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    """One query tile of the dK/dV kernel's pass: the sums q(dS)^T q and q(P)^T dO after the queries start..
    start + BM (tiles transposed, [keys, queries])."""
    rows = start + tl.arange(0, BM)
    m, total = _row_stats(stats_ptr, bh, rows, TQ)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * TQ + rows, mask=rows < TQ, other=0.0)
    tt = tl.dot(k, _tile_t(qh_ptr, start, TQ, D, BM, DP)) * (scale * LOG2E_FP32)
    pt = tl.exp2(tt - m[None, :]) / total[None, :]
    if masked:  # two branches of one result each: one of both kept more registers live (the kernel spilled)
        pt = tl.where(_visible(rows[None, :], cols[:, None], TK, CAUSAL) & (rows[None, :] < TQ), pt, 0.0)
    dpt = tl.dot(v, _tile_t(doh_ptr, start, TQ, D, BM, DP))
    dst = pt * (dpt - delta[None, :])
    if masked:  # 0 whatever dP holds there (a NaN of dO's row stays out of keys the row cannot see)
        dst = tl.where(_visible(rows[None, :], cols[:, None], TK, CAUSAL) & (rows[None, :] < TQ), dst, 0.0)
    ptq = _fake_quantize_probabilities(pt, BN, BM).to(doq_ptr.dtype.element_ty)
    dv = tl.dot(ptq, _tile(doq_ptr, start, TQ, D, BM, DP), dv)
    u = dst
    if ROUNDING != 0:
        u = tl.rand(seed, rows[None, :].to(tl.int64) * TK + cols[:, None])
    dstq = _fake_quantize(dst, u, BN, BM, ROUNDING).to(qq_ptr.dtype.element_ty)
    dk = tl.dot(dstq, _tile(qq_ptr, start, TQ, D, BM, DP), dk)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    qh_ptr,
    kh_ptr,
    doh_ptr,
    vh_ptr,
    qq_ptr,
    doq_ptr,
    stats_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    scale,
    seed,
    TQ,
    TK,
    D,
    HQ,
    REP,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    CAUSAL: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    # one program: BN keys of one query head; the tiles are transposed ([keys, queries]) so that P and dS are
    # quantized along queries, their last axis
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    cols = pid_n * BN + tl.arange(0, BN)
    q_off = bh.to(tl.int64) * TQ * D
    kv = _kv_head(bh, HQ, REP).to(tl.int64) * TK * D
    k = _tile(kh_ptr + kv, pid_n * BN, TK, D, BN, DP)
    v = _tile(vh_ptr + kv, pid_n * BN, TK, D, BN, DP)
    dk = tl.zeros([BN, DP], tl.float32)
    dv = tl.zeros([BN, DP], tl.float32)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BN // BM) * BM  # the first query block that sees one of these keys
    # the query tiles in which every key of this block is seen: after the diagonal, before TQ's partial tile,
    # none where the block itself runs past TK; the rest are masked
    whole = lo
    if CAUSAL:
        whole = tl.cdiv(pid_n * BN + BN - 1, BM) * BM
    whole_end = (TQ // BM) * BM
    if pid_n * BN + BN > TK:
        whole = TQ
    whole = tl.minimum(tl.maximum(whole, lo), TQ)
    whole_end = tl.maximum(whole_end, whole)
    for start in range(lo, TQ, BM):
        dk, dv = _dkdv_step(k, v, qh_ptr + q_off, doh_ptr + q_off, qq_ptr + q_off, doq_ptr + q_off, stats_ptr,
                            delta_ptr, bh, cols, start, scale, seed + bh, TQ, TK, D, dk, dv,
                            (start < whole) | (start >= whole_end), BM, BN, DP, CAUSAL, ROUNDING)  # fmt: skip
    d = tl.arange(0, DP)
    out = (cols[:, None] < TK) & (d[None, :] < D)
    dst_ptr = bh.to(tl.int64) * TK * D + cols[:, None] * D + d[None, :]
    tl.store(dk_ptr + dst_ptr, (dk * scale).to(dk_ptr.dtype.element_ty), mask=out)
    tl.store(dv_ptr + dst_ptr, dv.to(dv_ptr.dtype.element_ty), mask=out)


@triton.jit
def _gqa_sum_kernel(src_ptr, dst_ptr, N, REP: tl.constexpr, BLOCK: tl.constexpr):
    # one program: BLOCK elements of one (batch, key/value head); the REP query heads' float32 rows added in order
    pid = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < N
    acc = tl.load(src_ptr + pid * REP * N + offs, mask=inside, other=0.0)
    for r in tl.static_range(1, REP):
        acc += tl.load(src_ptr + (pid * REP + r) * N + offs, mask=inside, other=0.0)
    tl.store(dst_ptr + pid * N + offs, acc.to(dst_ptr.dtype.element_ty), mask=inside)


# ----------------------------------------------------------------------------------------------------
# Python wrappers


def _seed() -> int:
    # from torch's CPU generator: seeded runs repeat, and no device value is read back
    return int(torch.randint(0, 2**31 - 1 - 2**20, (1,)).item())


@torch.compiler.disable
def operand(
    x: torch.Tensor,
    *,
    along_sequence: bool = False,
    hadamard_size: int = 0,
    stochastic: bool = False,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The MXFP4 values of x [B, H, T, D] as a contiguous OPERAND_DTYPE tensor: quantized along head_dim (after the
    block Hadamard of `hadamard_size` along it, 0 for none) or along the sequence, to nearest or stochastically
    (`uniforms`: float32 [B, H, T, D] draws to use instead of Philox's). The torch reference is
    `fake_quantize_mxfp4(block_hadamard(x, -1, hadamard_size), axis, rounding)`."""
    if along_sequence and hadamard_size:
        raise ValueError("the Hadamard runs along head_dim: an operand quantized along the sequence takes none")
    forms = _operands(x, not along_sequence, along_sequence, hadamard_size, stochastic, (uniforms, uniforms))
    return forms[1] if along_sequence else forms[0]


@torch.compiler.disable
def operands(
    x: torch.Tensor,
    *,
    hadamard_size: int = 0,
    stochastic: bool = False,
    uniforms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both of x's forms from one read: (`operand(x, hadamard_size=...)`, `operand(x, along_sequence=True)`), with
    independent draws where `stochastic` (a fresh Philox seed each, drawn in that order) or given (`uniforms`: a
    pair, one per form)."""
    return _operands(x, True, True, hadamard_size, stochastic, uniforms or (None, None))


def _operands(x, head_dim, sequence, hadamard_size, stochastic, uniforms):
    B, H, T, D = x.shape
    if T % BLOCK_SIZE or D % BLOCK_SIZE or (hadamard_size and D % hadamard_size):
        raise ValueError(
            f"MXFP4 attention operands need T and head_dim multiples of {BLOCK_SIZE}, got {tuple(x.shape)}"
        )
    if uniforms[0] is not None or uniforms[1] is not None:
        if (head_dim and uniforms[0] is None) or (sequence and uniforms[1] is None):
            raise ValueError("given uniforms need one tensor per form written")
        rounding = ROUND_SR_GIVEN
        uniforms = tuple(x if u is None else u.to(torch.float32).contiguous() for u in uniforms)
    else:
        rounding = ROUND_SR_PHILOX if stochastic else ROUND_NEAREST
        uniforms = (x, x)  # unread
    seeds = [_seed() if rounding == ROUND_SR_PHILOX and form else 0 for form in (head_dim, sequence)]
    out = torch.empty((B, H, T, D), dtype=OPERAND_DTYPE, device=x.device) if head_dim else None
    seq = torch.empty((B, H, T, D), dtype=OPERAND_DTYPE, device=x.device) if sequence else None
    grid = (triton.cdiv(T, OPERAND_ROWS), B * H)
    _operand_kernel[grid](
        x, *uniforms, out if head_dim else seq, seq if sequence else out, T, D, H, *x.stride(), *seeds,
        BT=OPERAND_ROWS,
        DP=triton.next_power_of_2(D),
        HSIZE=hadamard_size,
        HSCALE=hadamard_scale(hadamard_size) if hadamard_size else 1.0,
        HEAD_DIM=head_dim,
        SEQUENCE=sequence,
        ROUNDING=rounding,
        num_warps=8,
    )  # fmt: skip
    return out, seq


MAX_GRID_Y = 65535  # CUDA's limit on the second grid axis, which holds batch x heads


def _heads(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query heads per key/value head, refused where the kernels cannot take the shapes."""
    if k.shape[1] < 1 or q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are no multiple of {k.shape[1]} key/value heads")
    if q.shape[0] * q.shape[1] > MAX_GRID_Y:
        raise ValueError(
            f"the attention kernels take at most {MAX_GRID_Y} (batch x query heads), got {q.shape[0]} x "
            f"{q.shape[1]}: split the batch"
        )
    return q.shape[1] // k.shape[1]


@torch.compiler.disable
def forward(
    qh: torch.Tensor, kh: torch.Tensor, vq: torch.Tensor, scale: float, causal: bool, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O [B, Hq, Tq, D] in out_dtype, row statistics float32 [B, Hq, Tq, 2]: each row's stabilizer M and sum L
    of q(E), from which the backward recomputes P = E / L as the forward had it) from the quantized operands: qh,
    kh along head_dim after the Hadamard, vq along keys (contiguous bf16 from `operand`)."""
    B, HQ, TQ, D = qh.shape
    TK = kh.shape[2]
    o = torch.empty((B, HQ, TQ, D), dtype=out_dtype, device=qh.device)
    stats = torch.empty((B, HQ, TQ, 2), dtype=torch.float32, device=qh.device)
    bm, bn, warps = FORWARD_TILES
    _forward_kernel[(triton.cdiv(TQ, bm), B * HQ)](
        qh, kh, vq, o, stats, scale, TQ, TK, D, HQ, _heads(qh, kh),
        BM=bm, BN=bn, DP=triton.next_power_of_2(D), CAUSAL=causal, num_warps=warps,
    )  # fmt: skip
    return o, stats


@torch.compiler.disable
def backward(
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    doh: torch.Tensor,
    qq: torch.Tensor,
    kq: torch.Tensor,
    doq: torch.Tensor,
    do: torch.Tensor,
    o: torch.Tensor,
    stats: torch.Tensor,
    scale: float,
    causal: bool,
    stochastic: bool,
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq [B, Hq, Tq, D], dk, dv [B, Hkv, Tk, D]) in `dtypes`, rounded once from their float32 sums, from the
    quantized operands (qh, kh, vh, doh along head_dim after the Hadamard; qq, kq, doq along the sequence), the
    unquantized output gradient and output (do, o: contiguous, like q) and the forward's row statistics. dS is
    quantized stochastically where `stochastic` (fresh Philox seeds from torch's CPU generator)."""
    B, HQ, TQ, D = qh.shape
    TK = kh.shape[2]
    rep = _heads(qh, kh)
    dev = qh.device
    dp = triton.next_power_of_2(D)
    rounding = ROUND_SR_PHILOX if stochastic else ROUND_NEAREST
    bm, bn, warps = DQ_TILES_SR if stochastic else DQ_TILES
    dq = torch.empty((B, HQ, TQ, D), dtype=dtypes[0], device=dev)
    delta = torch.empty((B, HQ, TQ), dtype=torch.float32, device=dev)
    _dq_kernel[(triton.cdiv(TQ, bm), B * HQ)](
        qh, kh, doh, vh, kq, do, o, stats, delta, dq, scale, _seed() if stochastic else 0, TQ, TK, D, HQ, rep,
        BM=bm, BN=bn, DP=dp, CAUSAL=causal, ROUNDING=rounding, num_warps=warps,
    )  # fmt: skip
    bm, bn, warps = DKDV_TILES_SR if stochastic else DKDV_TILES
    # per query head; where several share a key/value head, in float32, summed over them after the kernel (what
    # repeat_interleave's gradient is; one program summing the heads in its loop measured slower at seq 8192:
    # docs/benchmarks.md)
    dk = torch.empty((B, HQ, TK, D), dtype=dtypes[1] if rep == 1 else torch.float32, device=dev)
    dv = torch.empty((B, HQ, TK, D), dtype=dtypes[2] if rep == 1 else torch.float32, device=dev)
    _dkdv_kernel[(triton.cdiv(TK, bn), B * HQ)](
        qh, kh, doh, vh, qq, doq, stats, delta, dk, dv, scale, _seed() if stochastic else 0, TQ, TK, D, HQ, rep,
        BM=bm, BN=bn, DP=dp, CAUSAL=causal, ROUNDING=rounding, num_warps=warps,
    )  # fmt: skip
    if rep > 1:
        dk, dv = gqa_sum(dk, rep, dtypes[1]), gqa_sum(dv, rep, dtypes[2])
    return dq, dk, dv


GQA_SUM_BLOCK = 4096  # elements per program: a streaming pass, bound by bytes


def gqa_sum(x: torch.Tensor, rep: int, dtype: torch.dtype) -> torch.Tensor:
    """x [B, Hq, T, D] float32 (contiguous) summed over each group of `rep` consecutive query heads, in order,
    rounded once to `dtype`: [B, Hq / rep, T, D], in one pass (the torch reference: gqa_sum_reference)."""
    B, HQ, T, D = x.shape
    out = torch.empty((B, HQ // rep, T, D), dtype=dtype, device=x.device)
    _gqa_sum_kernel[(triton.cdiv(T * D, GQA_SUM_BLOCK), B * HQ // rep)](
        x, out, T * D, REP=rep, BLOCK=GQA_SUM_BLOCK, num_warps=8
    )
    return out


def gqa_sum_reference(x: torch.Tensor, rep: int, dtype: torch.dtype) -> torch.Tensor:
    """gqa_sum in torch: the float32 heads of a group added in order, then one rounding."""
    heads = x.view(x.shape[0], x.shape[1] // rep, rep, *x.shape[2:]).unbind(2)
    total = heads[0].clone()
    for h in heads[1:]:
        total += h
    return total.to(dtype)
