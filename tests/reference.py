"""Independent float64 / ml_dtypes references for the tests. Shares no code with adahop.

MXFP4 per OCP v1.0: block scale 2^(floor(log2 amax) - 2) clamped to [2^-127, 2^127], elements cast to
ml_dtypes.float4_e2m1fn (round to nearest even, saturating), a block with NaN/Inf -> all NaN.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

F4 = ml_dtypes.float4_e2m1fn


def block_exponent(amax: float) -> int:
    if amax == 0:
        return -127
    mantissa, exp = math.frexp(amax)  # amax = mantissa * 2^exp, mantissa in [0.5, 1)
    return int(min(max(exp - 1 - 2, -127), 127))


def quantize_last_axis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dequantized float64, 4-bit codes uint8 with zero as 0, E8M0 bytes) along the last axis."""
    x = np.asarray(x, dtype=np.float64)
    assert x.shape[-1] % 32 == 0
    blocks = x.reshape(-1, 32)
    deq = np.empty_like(blocks)
    codes = np.zeros(blocks.shape, dtype=np.uint8)
    scales = np.empty(blocks.shape[0], dtype=np.uint8)
    for i, b in enumerate(blocks):
        if not np.isfinite(b).all():
            deq[i] = np.nan
            scales[i] = 255
            continue
        e = block_exponent(float(np.abs(b).max()))
        scaled = b / 2.0**e
        q = scaled.astype(F4)
        c = q.view(np.uint8) & 0xF
        c[(c & 7) == 0] = 0  # our convention: zero is always code 0
        codes[i] = c
        deq[i] = q.astype(np.float64) * 2.0**e
        scales[i] = np.array(2.0**e).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    nb = x.shape[-1] // 32
    return deq.reshape(x.shape), codes.reshape(x.shape), scales.reshape(*x.shape[:-1], nb)


def fake_quant(x: np.ndarray, axis: int = -1) -> np.ndarray:
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return np.moveaxis(quantize_last_axis(moved)[0], -1, axis)


def hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


def block_hadamard(x: np.ndarray, block: int = 32, signs: np.ndarray | None = None) -> np.ndarray:
    """x @ diag(signs) @ blockdiag(H) along the last axis, float64."""
    x = np.asarray(x, dtype=np.float64)
    if signs is not None:
        x = x * signs
    k = x.shape[-1]
    return (x.reshape(*x.shape[:-1], k // block, block) @ hadamard(block)).reshape(x.shape)


def bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def top_rows(a: np.ndarray, k: int) -> np.ndarray:
    norms = (np.asarray(a, dtype=np.float64) ** 2).sum(axis=1)
    return np.sort(np.argsort(-norms, kind="stable")[: min(k, a.shape[0])])


def gemm(a: np.ndarray, bt: np.ndarray, mode: str, block: int = 32, k_out: int = 64, signs=None) -> np.ndarray:
    """Definition of one AdaHOP slot: a [M, K] @ bt [N, K]^T under `mode`, float64."""
    a = np.asarray(a, dtype=np.float64)
    bt = np.asarray(bt, dtype=np.float64)
    if mode == "full_precision":
        return bf16(a) @ bf16(bt).T
    if mode == "none":
        return fake_quant(a) @ fake_quant(bt).T

    def q(t):
        return fake_quant(block_hadamard(t, block, signs))

    if mode == "hadamard":
        return q(a) @ q(bt).T
    if mode == "inner_outlier_extract_left":
        rows = top_rows(a, k_out)
        rest = a.copy()
        rest[rows] = 0
        out = q(rest) @ q(bt).T
        out[rows] += bf16(a[rows]) @ bf16(bt).T
        return out
    if mode == "inner_outlier_extract_right":
        rows = top_rows(bt, k_out)
        rest = bt.copy()
        rest[rows] = 0
        out = q(a) @ q(rest).T
        out[:, rows] += bf16(a) @ bf16(bt[rows]).T
        return out
    raise ValueError(mode)
