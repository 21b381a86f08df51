"""The fused Hadamard + MXFP4 kernels against the torch reference, bit for bit.

Runs on CUDA when present, else on the CPU with TRITON_INTERPRET=1 (see conftest.py). Shapes are small
so the interpreter keeps the whole file within a minute or two on 2 cores.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from adahop import backend
from adahop.hadamard import random_signs
from adahop.kernels import deferred
from adahop.kernels.gemm import FastOperand, _correction
from adahop.kernels.quantize import (
    deficient_blocks,
    fused_quantize,
    fused_reencode,
    reference_fp8,
)
from adahop.mx import dequantize_mxfp4

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def reference(t, *, k_dim=1, hadamard_size=None, signs=None, zero_rows=None, rounding="nearest", generator=None):
    """Packed codes and scales of the torch reference (backend's reference branch, forced)."""
    k_major = backend.transform(
        t.cpu(),
        k_dim=k_dim,
        hadamard_size=hadamard_size,
        signs=None if signs is None else signs.cpu(),
        zero_rows=None if zero_rows is None else zero_rows.cpu(),
    )
    from adahop.mx import quantize_blocks

    q = quantize_blocks(k_major, axis=-1, rounding=rounding, generator=generator)
    return q.packed_codes(), q.scale_bytes()


def check_against_reference(t, *, uniforms_seed=None, tile=False, wide=False, row_flags=False, **kw):
    """Run the kernel and the reference; compare every output bit for bit. Returns the kernel outputs."""
    rounding = kw.get("rounding", "nearest")
    gen = uniforms = None
    k_dim = kw.get("k_dim", 1)
    R, K = t.shape[1 - k_dim], t.shape[k_dim]
    if rounding == "stochastic":
        gen = torch.Generator().manual_seed(uniforms_seed)
        uniforms = torch.rand((R, K // 32, 32), generator=torch.Generator().manual_seed(uniforms_seed)).reshape(R, K)
    ref_packed, ref_scales = reference(t, generator=gen, **kw)
    dev_kw = {k: (v.to(DEV) if torch.is_tensor(v) else v) for k, v in kw.items()}
    out = fused_quantize(t.to(DEV), uniforms=uniforms, tile=tile, wide=wide, row_flags=row_flags, **dev_kw)
    assert torch.equal(out["scales"].cpu(), ref_scales), "E8M0 scales differ"
    assert torch.equal(out["packed"].cpu(), ref_packed), "packed E2M1 codes differ"
    bits, gscale = reference_fp8(ref_packed, ref_scales, tile=tile, wide=wide)
    assert out["fp8"].dtype == (torch.float8_e5m2 if wide else torch.float8_e4m3fn)
    assert torch.equal(out["fp8"].view(torch.uint8).cpu(), bits), "fp8 re-encoding differs"
    assert torch.equal(out["gscale"].cpu(), gscale), "group scales differ"
    defi = deficient_blocks(ref_packed, ref_scales, tile, wide)
    if row_flags:
        assert int(out["count"].item()) == 0, "flagged rows' blocks are not counted"
        assert torch.equal(out["row_flags"].cpu().bool(), defi.any(1)), "row flags differ"
    else:
        assert int(out["count"].item()) == int(defi.sum())
    return out


@pytest.mark.parametrize("k_dim", [1, 0])
def test_every_bf16_magnitude_and_the_neighbours_of_every_tie(k_dim):
    """Nearest rounding of every bf16 magnitude below 8 and of the float32 values next to each E2M1 tie,
    at block scale 1 (each 32-block led by +-6, so its exponent is 0 and the kernel rounds the value
    itself), against the reference: all three ranges of the grid step, saturation above 6, subnormals."""
    bits = torch.arange(0, 0x4100, dtype=torch.int32).to(torch.int16)  # bf16 bit patterns of 0 .. 8
    mags = bits.view(torch.bfloat16).to(torch.float32)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0])
    near = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1), torch.tensor([6.0, 8.0])])
    vals = torch.cat([mags, near])
    vals = torch.cat([vals, -vals])
    per_block = 31
    n_blocks = -(-vals.numel() // per_block)
    body = torch.cat([vals, torch.zeros(n_blocks * per_block - vals.numel())]).view(n_blocks, per_block)
    lead = torch.where(torch.arange(n_blocks) % 2 == 0, 6.0, -6.0)[:, None]
    blocks = torch.cat([lead, body], 1)
    blocks = torch.cat([blocks, torch.full((-n_blocks % 4, 32), 6.0)])  # whole 128-groups
    t = blocks.reshape(-1, 128)
    check_against_reference(t if k_dim == 1 else t.t().contiguous(), k_dim=k_dim)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k_dim", [1, 0])
@pytest.mark.parametrize("hsize", [None, 32, 128])
def test_nearest_matches_reference(dtype, k_dim, hsize):
    g = torch.Generator().manual_seed(zlib.crc32(repr((str(dtype), k_dim, hsize)).encode()))
    R, K = 48, 256  # rows not a multiple of the row block: masked tail
    t = torch.randn((R, K) if k_dim == 1 else (K, R), generator=g).to(dtype)
    t = t * torch.exp2(torch.randint(-6, 6, t.shape, generator=g)).to(dtype)
    check_against_reference(t, k_dim=k_dim, hadamard_size=hsize)


@pytest.mark.parametrize("k_dim", [1, 0])
def test_signs_zero_rows_and_small_hadamard(k_dim):
    g = torch.Generator().manual_seed(7)
    R, K = 40, 128
    t = torch.randn((R, K) if k_dim == 1 else (K, R), generator=g).to(torch.bfloat16)
    signs = random_signs(K, 3)
    zero_rows = torch.tensor([0, 5, 39])
    for hsize in (2, 16, 64):
        check_against_reference(t, k_dim=k_dim, hadamard_size=hsize, signs=signs, zero_rows=zero_rows)


@pytest.mark.parametrize("k_dim", [1, 0])
@pytest.mark.parametrize("hsize", [None, 32])
def test_stochastic_with_given_uniforms_matches_reference(k_dim, hsize):
    g = torch.Generator().manual_seed(11)
    R, K = 33, 256
    t = torch.randn((R, K) if k_dim == 1 else (K, R), generator=g)
    t[3] *= 1e4
    check_against_reference(t, k_dim=k_dim, hadamard_size=hsize, rounding="stochastic", uniforms_seed=5)


def _grid_block(e: int, values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32) * 2.0**e


def adversarial_rows() -> torch.Tensor:
    """Rows of 256 (two fp8 groups) built to hit the corner cases of the format."""
    ties = [
        0.25,
        0.75,
        1.25,
        1.75,
        2.5,
        3.5,
        5.0,
        7.0,
        -0.25,
        -0.75,
        -1.25,
        -1.75,
        -2.5,
        -3.5,
        -5.0,
        -7.0,
        4.0,
        6.0,
        6.5,
        7.5,
        0.0,
        -0.0,
        0.5,
        1.0,
        1.5,
        2.0,
        3.0,
        -6.0,
        0.125,
        0.2,
        0.3,
        7.99,
    ]
    rows = []
    row = torch.cat([_grid_block(e, ties) for e in (0, -3, 5, 17, -20, 40, -60, 100)])
    rows.append(row)
    rows.append(torch.zeros(256))  # all zero
    r = torch.randn(256)
    r[3] = float("nan")
    r[70] = float("inf")
    r[140] = -float("inf")
    rows.append(r)  # NaN / Inf blocks
    r = torch.randn(256) * 3e38
    rows.append(r)  # Hadamard sums overflow to Inf
    rows.append(torch.randn(256) * 1e-40)  # fp32 subnormals
    rows.append(torch.randn(256) * 2.0**-126)
    # exponents far apart inside one 128-group: deficient blocks (gap > 14) and gaps of exactly 14, 15
    r = torch.cat(
        [
            torch.randn(32) * 2.0**20,
            torch.randn(32) * 2.0**4,
            torch.randn(32) * 2.0**6,
            torch.randn(32),
            torch.randn(32) * 2.0**30,
            torch.randn(32) * 2.0**15,
            torch.randn(32) * 2.0**16,
            torch.zeros(32),
        ]
    )
    rows.append(r)
    r = torch.full((256,), 1.0)
    r[::7] = -(2.0**-130)
    rows.append(r)
    rows.append(torch.full((256,), 3.4e38))
    rows.append(torch.full((256,), -1e-45))
    # blocks whose amax is so small that their exponent clamps at -127, beside a block of ones (a gap far
    # beyond fp8): 1.5 * 2^-129 is 0.375 on that block's grid and rounds to the code 0.5 (a deficient
    # block), 2^-129 is 0.25 and ties to 0 (an empty one); the same again with a second element per block
    r = torch.zeros(256)
    r[:32] = 1.0
    r[40], r[70], r[128:160], r[170], r[171], r[200], r[201] = (
        1.5 * 2.0**-129,
        2.0**-129,
        1.0,
        1.5 * 2.0**-129,
        2.0**-130,
        2.0**-129,
        -(2.0**-129),
    )
    rows.append(r)
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hsize", [None, 32])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_adversarial_inputs(dtype, hsize, rounding):
    t = adversarial_rows().to(dtype)
    for k_dim in (1, 0):
        tt = t if k_dim == 1 else t.t().contiguous()
        out = check_against_reference(tt, k_dim=k_dim, hadamard_size=hsize, rounding=rounding, uniforms_seed=3)
    if hsize is None and dtype == torch.float32:
        assert out["count"].item() > 0  # the far-apart row makes deficient blocks: counted, not dropped
        assert (out["scales"][2] == 255).sum() == 3  # the three non-finite blocks are NaN blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hsize", [None, 32])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_bf16_values_are_the_packed_form_dequantized(dtype, hsize, rounding):
    """write_bf16 (the grouped GEMMs' operands): bit for bit the reference's packed form dequantized to bf16 (zero
    as +0, NaN blocks, subnormal and overflowing values), with the same stochastic draws."""
    t = adversarial_rows().to(dtype)
    for k_dim in (1, 0):
        tt = t if k_dim == 1 else t.t().contiguous()
        gen = torch.Generator().manual_seed(3)
        uniforms = torch.rand((t.shape[0], t.shape[1] // 32, 32), generator=torch.Generator().manual_seed(3))
        ref_packed, ref_scales = reference(tt, k_dim=k_dim, hadamard_size=hsize, rounding=rounding, generator=gen)
        want = dequantize_mxfp4(ref_packed, ref_scales, axis=-1, dtype=torch.bfloat16)
        out = fused_quantize(
            tt.to(DEV), k_dim=k_dim, hadamard_size=hsize, rounding=rounding, uniforms=uniforms.reshape(t.shape),
            write_packed=False, write_fp8=False, write_bf16=True,
        )  # fmt: skip
        got = out["bf16"].cpu()
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(got.view(torch.int16)[~nan], want.view(torch.int16)[~nan])
    assert nan.any() and (want == 0).any()


def test_non_contiguous_input_and_tile_scales():
    g = torch.Generator().manual_seed(2)
    big = torch.randn(128, 512, generator=g).to(torch.bfloat16)
    t = big[:, ::2]  # strided view, K = 256
    check_against_reference(t, k_dim=1, hadamard_size=32)
    w = torch.randn(256, 128, generator=g)
    w[:, 17] *= 2.0**16  # one huge column: its tile's other blocks fall far below
    check_against_reference(w, k_dim=1, hadamard_size=None, tile=True)
    check_against_reference(w.t().contiguous(), k_dim=0, hadamard_size=32, tile=True)


@pytest.mark.parametrize("tile", [False, True])
def test_reencode_kernel(tile):
    adv = adversarial_rows()
    t = torch.cat([adv, torch.randn(128 - adv.shape[0], 256)]).to(torch.float32)  # 128 rows: one tile
    ref_packed, ref_scales = reference(t, hadamard_size=None)
    out = fused_reencode(ref_packed.to(DEV), ref_scales.to(DEV), tile=tile)
    bits, gscale = reference_fp8(ref_packed, ref_scales, tile=tile)
    assert torch.equal(out["fp8"].view(torch.uint8).cpu(), bits)
    assert torch.equal(out["gscale"].cpu(), gscale)
    assert int(out["count"].item()) == int(deficient_blocks(ref_packed, ref_scales, tile).sum()) > 0


def test_fp8_form_is_the_mxfp4_values_except_counted_blocks():
    """Dequantized fp8 form == dequantized MXFP4, except deficient blocks, which are zero there."""
    t = torch.cat([adversarial_rows()[[0, 1, 4, 5, 6, 7, 9]], torch.randn(25, 256) * 50])
    out = fused_quantize(t.to(DEV), hadamard_size=None)
    op = FastOperand(out["fp8"], out["gscale"], out["count"], out["packed"], out["scales"])
    mx = op.dequantize().cpu()
    f8 = op.fp8_dequantize().cpu()
    defi = deficient_blocks(out["packed"].cpu(), out["scales"].cpu()).repeat_interleave(32, 1)
    assert defi.any()
    assert torch.equal(torch.where(defi, 0.0, mx), f8)


def test_correction_restores_the_exact_gemm():
    g = torch.Generator().manual_seed(4)
    a_t = torch.randn(64, 256, generator=g)
    a_t[5, 0:32] *= 2.0**20  # row 5: blocks 1..3 fall > 14 below block 0
    b_t = torch.randn(128, 256, generator=g)
    b_t[:, 130] *= 2.0**24  # one huge column of Bt in group 1: tile-deficient blocks
    a = fused_quantize(a_t.to(DEV), hadamard_size=None)
    b = fused_quantize(b_t.to(DEV), hadamard_size=None, tile=True)
    fa = FastOperand(a["fp8"], a["gscale"], a["count"], a["packed"], a["scales"])
    fb = FastOperand(b["fp8"], b["gscale"], b["count"], b["packed"], b["scales"], tile=True)
    assert fa.count.item() > 0 and fb.count.item() > 0
    exact = fa.dequantize().double() @ fb.dequantize().double().t()
    out = fa.fp8_dequantize() @ fb.fp8_dequantize().t()
    assert not torch.allclose(out.double(), exact, rtol=1e-5, atol=0)
    da = deficient_blocks(fa.packed, fa.scales)
    db = deficient_blocks(fb.packed, fb.scales, tile=True)
    _correction(fa, fb, da, db, out)
    err = (out.double() - exact).abs().max() / exact.abs().max()
    assert err < 1e-6, err


def test_philox_stochastic_rounding_is_unbiased():
    x = torch.linspace(-3.0, 3.0, 256).repeat(64, 1)  # 64 rows, each 256 along K
    total = torch.zeros_like(x, dtype=torch.float64)
    n = 64
    for seed in range(n):
        out = fused_quantize(x.to(DEV), hadamard_size=None, rounding="stochastic", seed=seed + 1, write_fp8=False)
        total += dequantize_mxfp4(out["packed"].cpu(), out["scales"].cpu()).double()
    # the grid step here is at most 1, so one draw's error has std <= 0.5 and the mean of 64 rows x 64 seeds
    # = 4096 draws per element std <= 0.5 / 64: the bound is more than 6 of those
    mean = (total / n).mean(0)
    assert (mean - x[0].double()).abs().max() < 0.05
    assert (total / n).ne(x.double()).any()  # and it is not just rounding to nearest


@pytest.mark.parametrize("k_dim", [1, 0])
def test_philox_draws_of_neighbours_are_independent(k_dim):
    """One Philox call serves four neighbours along K: each must get its own output. At 2.5 (5 on the
    block's grid, halfway between 4 and 6) every element rounds up with probability 1/2; the up/down
    decisions of neighbours, in one call and across calls, must not be correlated."""
    x = torch.full((64, 256), 2.5)
    ups = []
    for seed in range(16):
        t = x.to(DEV) if k_dim == 1 else x.t().contiguous().to(DEV)
        out = fused_quantize(t, k_dim=k_dim, hadamard_size=None, rounding="stochastic", seed=seed + 1, write_fp8=False)
        ups.append(dequantize_mxfp4(out["packed"].cpu(), out["scales"].cpu()) > 2.5)
    up = torch.cat(ups).double()  # [1024 draws, 256 along K]
    assert abs(up.mean().item() - 0.5) < 0.02
    corr = torch.corrcoef(up[:, :12].t())  # every pair of the first three calls' elements
    off = corr[~torch.eye(12, dtype=torch.bool)]
    assert off.abs().max() < 0.2, corr  # independent: std ~ 1/32


@pytest.mark.parametrize("hvariant,strided_kernel", [(0, "trans"), (0, "t"), (2, "trans")])
@pytest.mark.parametrize("rows_warps", [(16, 4), (64, 8)])
def test_launch_variants_give_the_same_bits(hvariant, strided_kernel, rows_warps):
    from adahop.kernels.state import FastPathState, activate

    state = FastPathState()
    state.tuning.update(
        contig=rows_warps,
        strided=rows_warps,
        reencode=rows_warps,
        hv_contig=hvariant,
        hv_strided=hvariant,
        strided_t=rows_warps,
        strided_kernel=strided_kernel,
    )
    previous = activate(state)
    try:
        t = torch.cat([adversarial_rows(), torch.randn(70, 256)]).to(torch.bfloat16)
        check_against_reference(t, k_dim=1, hadamard_size=32)
        check_against_reference(t.t().contiguous(), k_dim=0, hadamard_size=32, signs=random_signs(256, 1))
        check_against_reference(t, k_dim=1, hadamard_size=128, rounding="stochastic", uniforms_seed=9)
    finally:
        activate(previous)


def test_deferred_check_collects_counts_and_raises():
    """Inside deferred_check every kernel adds its deficient-block count to the step's counter (the same
    number it reports per operand outside), and raise_if_deficient raises with the total."""
    from adahop.kernels import deferred, gemm

    t = torch.cat([adversarial_rows(), torch.randn(22, 256)]).to(torch.float32).to(DEV)
    alone = int(fused_quantize(t, hadamard_size=None)["count"].item())
    packed, scales = reference(t.cpu(), hadamard_size=None)
    alone_re = int(fused_reencode(packed.to(DEV), scales.to(DEV))["count"].item())
    assert alone > 0 and alone_re > 0
    deferred.raise_if_deficient()  # outside a check: nothing to read
    gemm.reset_stats()
    with deferred.deferred_check(torch.device(DEV)) as counter:
        out = fused_quantize(t, hadamard_size=None)
        assert out["count"] is counter
        fused_reencode(packed.to(DEV), scales.to(DEV))
        assert int(counter.item()) == alone + alone_re
        with pytest.raises(deferred.DeficientBlocksInStep) as err:
            deferred.raise_if_deficient()
        assert err.value.count == alone + alone_re
    assert not deferred.deferred() and gemm.stats()["redone_steps"] == 1
    with deferred.deferred_check(torch.device(DEV)):
        fused_quantize(torch.randn(32, 256, device=DEV), hadamard_size=32)
        deferred.raise_if_deficient()  # ordinary data: no block left out, no exception


# ---- the wide (e5m2) fp8 form of left operands, row flags, the exact row split -------------------------


def far_apart_rows(n_rows=48, K=256, seed=11):
    """Random rows with one 32-block per row scaled up by 2^gap (gaps 10..40 cycling, sign mixed), so that
    the other blocks of its 128-group sit `gap` exponents below it; plus zeros and a NaN block."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n_rows, K, generator=g)
    for r in range(n_rows):
        gap = 10 + (r * 7) % 31
        blk = (r * 5) % (K // 32)
        t[r, blk * 32 : (blk + 1) * 32] *= 2.0**gap * (-1) ** r
    t[3] = 0.0
    t[4, 40] = float("nan")
    return t


def block_gaps(scales):
    """int [R, K/32]: group maximum exponent minus block exponent (independent of the kernels' code)."""
    e = scales.to(torch.int64) - 127
    e = torch.where(scales == 255, torch.full_like(e, -127), e)
    gmax = e.view(e.shape[0], -1, 4).amax(-1).repeat_interleave(4, 1)
    return gmax - e


@pytest.mark.parametrize("k_dim", [1, 0])
@pytest.mark.parametrize("hsize", [None, 32])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_wide_form_matches_reference(k_dim, hsize, rounding):
    t = far_apart_rows().to(torch.bfloat16)
    tt = t if k_dim == 1 else t.t().contiguous()
    check_against_reference(tt, k_dim=k_dim, hadamard_size=hsize, rounding=rounding, uniforms_seed=5, wide=True)
    check_against_reference(
        tt, k_dim=k_dim, hadamard_size=hsize, rounding=rounding, uniforms_seed=5, wide=True, row_flags=True
    )


def test_wide_form_holds_gaps_up_to_28_exactly():
    """Dequantized e5m2 form == the MXFP4 values wherever the block's gap is <= 28; zero beyond."""
    t = far_apart_rows()
    out = fused_quantize(t.to(DEV), hadamard_size=None, wide=True)
    op = FastOperand(out["fp8"], out["gscale"], out["count"], out["packed"], out["scales"])
    mx = op.dequantize().cpu()
    f8 = op.fp8_dequantize().cpu()
    nonzero = (mx.view(mx.shape[0], -1, 32) != 0).any(-1) | torch.isnan(mx.view(mx.shape[0], -1, 32)).any(-1)
    gaps = block_gaps(out["scales"].cpu())
    beyond = (gaps > 28) & nonzero & (out["scales"].cpu() != 255)
    assert beyond.any() and ((gaps > 14) & (gaps <= 28) & nonzero).any()  # both kinds are present
    lost = beyond.repeat_interleave(32, 1)
    assert torch.equal(torch.where(lost, 0.0, mx).nan_to_num(), f8.nan_to_num())
    assert int(out["count"].item()) == int(beyond.sum())
    assert torch.isnan(f8[4]).any()  # the NaN block stays NaN


def test_reencode_kernel_wide():
    t = torch.cat([far_apart_rows(), adversarial_rows()])
    ref_packed, ref_scales = reference(t, hadamard_size=None)
    out = fused_reencode(ref_packed.to(DEV), ref_scales.to(DEV), wide=True)
    bits, gscale = reference_fp8(ref_packed, ref_scales, wide=True)
    assert torch.equal(out["fp8"].view(torch.uint8).cpu(), bits)
    assert torch.equal(out["gscale"].cpu(), gscale)
    assert int(out["count"].item()) == int(deficient_blocks(ref_packed, ref_scales, wide=True).sum()) > 0


def test_row_split_is_exact_and_matches_reference():
    from adahop.kernels.quantize import fused_row_split, reference_row_split

    t = far_apart_rows()
    t[7, :128] = torch.randn(128)  # row 7's first group: blocks at 2^0, 2^30, 2^60, 2^0: block 0 and 3
    t[7, 32:64] *= 2.0**30  # lie 30 below the lo part's own maximum (block 1): beyond both parts
    t[7, 64:96] *= 2.0**60
    ref_packed, ref_scales = reference(t, hadamard_size=None)
    rows = torch.tensor([0, 7, 20, 21, 35, 0], dtype=torch.int64)  # a repeat, like the padded slots
    count = torch.zeros(1, dtype=torch.int32, device=DEV)
    out = fused_row_split(ref_packed.to(DEV), ref_scales.to(DEV), rows.to(DEV), count)
    ref = reference_row_split(ref_packed, ref_scales, rows)
    for k in ("hi", "lo"):
        assert torch.equal(out[k].view(torch.uint8).cpu(), ref[k]), k
        assert torch.equal(out[f"{k}_gscale"].cpu(), ref[f"{k}_gscale"]), k
    # the one GEMM operand: hi rows then lo rows, scales side by side ([K/128, 2n])
    assert torch.equal(out["both"].view(torch.uint8).cpu(), torch.cat([ref["hi"], ref["lo"]]))
    assert torch.equal(out["both_gscale"].cpu(), torch.cat([ref["hi_gscale"], ref["lo_gscale"]], dim=1))
    assert int(count.item()) == ref["beyond"]
    # independent check: hi + lo dequantized == the MXFP4 values of the rows, except blocks counted beyond
    mx = dequantize_mxfp4(ref_packed[rows], ref_scales[rows], axis=-1, dtype=torch.float32).double()

    def deq(bits, gs):
        return bits.view(torch.float8_e5m2).double() * gs.t().double().repeat_interleave(128, 1)

    both = deq(ref["hi"], ref["hi_gscale"]) + deq(ref["lo"], ref["lo_gscale"])
    assert ref["lo"].any() and not torch.equal(deq(ref["hi"], ref["hi_gscale"]), mx)
    diff = (both != mx).view(len(rows), -1, 32).any(-1).sum()
    assert int(diff) == ref["beyond"] > 0


def row_err(out, exact):
    """Largest error of `out` relative to the largest magnitude of its row of `exact`."""
    return ((out.double() - exact).abs() / exact.abs().amax(1, keepdim=True)).max()


def _fast_pair(a_t, b_t, **a_kw):
    a = fused_quantize(a_t.to(DEV), hadamard_size=None, wide=True, **a_kw)
    b = fused_quantize(b_t.to(DEV), hadamard_size=None)
    fa = FastOperand(a["fp8"], a["gscale"], a["count"], a.get("packed"), a.get("scales"), row_flags=a.get("row_flags"))
    fb = FastOperand(b["fp8"], b["gscale"], b["count"], b["packed"], b["scales"])
    return fa, fb


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fix_rows_makes_the_gemm_exact(out_dtype):
    from adahop.kernels.gemm import _fix_rows, _scaled_mm

    g = torch.Generator().manual_seed(9)
    a_t = torch.randn(64, 256, generator=g)
    alternating = torch.tensor([1.0, -1.0]).repeat(16)
    for r, gap in ((2, 31), (9, 40), (30, 50)):
        # block 0 of these rows: +-2^gap, which cancels exactly against B's constant block 0, so the rows'
        # products are the small blocks alone; these lie beyond the wide form's 28 and the fp8 GEMM drops them
        a_t[r, 0:32] = alternating * 2.0**gap
    b_t = torch.randn(96, 256, generator=g)
    b_t[:, 0:32] = torch.randn(96, 1, generator=g)
    fa, fb = _fast_pair(a_t, b_t, write_packed=True, row_flags=True)
    assert fa.row_flags.cpu().nonzero().squeeze(1).tolist() == [2, 9, 30] and int(fa.count.item()) == 0
    exact = fa.dequantize().double() @ fb.dequantize().double().t()
    out = _scaled_mm(fa, fb, out_dtype)
    bad = (out.double() - exact).abs().amax(1) / exact.abs().amax(1)
    assert (bad[[2, 9, 30]] > 0.5).all()  # without the fix those rows lose everything but a zero
    _fix_rows(fa, fb, out)
    # float32 out: the interpreter's float32 GEMM, or cuBLAS's fp8 accumulation on the GPU (see
    # tests/kernels/test_gpu_path.py: not a full fp32 accumulator inside 128-long chunks)
    tol = (1e-4 if DEV == "cuda" else 1e-6) if out_dtype == torch.float32 else 2**-8
    err = row_err(out, exact)
    assert err < tol, err
    assert int(fa.count.item()) == 0


def test_fix_rows_beyond_capacity_are_counted():
    from adahop.kernels import gemm

    g = torch.Generator().manual_seed(10)
    a_t = torch.randn(64, 256, generator=g)
    a_t[:20, 0:32] *= 2.0**35  # 20 flagged rows, room for ROW_FIX_MIN = 16 (M = 64)
    fa, fb = _fast_pair(a_t, torch.randn(32, 256, generator=g), write_packed=True, row_flags=True)
    cap = gemm.row_fix_capacity(64)
    out = gemm._scaled_mm(fa, fb, torch.float32)
    before = gemm.rows_fixed()
    gemm._fix_rows(fa, fb, out)
    assert int(fa.count.item()) == 20 - cap > 0  # the step would be redone exactly
    assert gemm.rows_fixed() - before == 20


@pytest.fixture
def default_row_slots():
    from adahop.kernels import gemm

    gemm.reset_row_slots()
    yield gemm
    gemm.reset_row_slots()


def test_row_slots_grow_after_an_overflow_and_then_hold_the_rows(default_row_slots, tmp_path):
    import json

    gemm = default_row_slots
    g = torch.Generator().manual_seed(13)
    m = 1024
    a_t = torch.randn(m, 128, generator=g)
    flagged = torch.randperm(m, generator=g)[:40]
    a_t[flagged, 0:32] = torch.tensor([1.0, -1.0]).repeat(16) * 2.0**40  # beyond the wide form's 28
    b_t = torch.randn(48, 128, generator=g)
    b_t[:, 0:32] = torch.randn(48, 1, generator=g)
    assert gemm.row_fix_capacity(m) == 16 and gemm.grow_row_slots(DEV) is None  # nothing overflowed yet
    fa, fb = _fast_pair(a_t, b_t, write_packed=True, row_flags=True)
    gemm._fix_rows(fa, fb, gemm._scaled_mm(fa, fb, torch.float32))
    assert int(fa.count.item()) == 40 - 16  # counted (the per-GEMM path corrects it) ...
    assert gemm.grow_row_slots(DEV) is None  # ... but outside a deferred step nothing is redone or grown
    with deferred.deferred_check(DEV) as counter:
        fa, fb = _fast_pair(a_t, b_t, write_packed=True, row_flags=True)
        gemm._fix_rows(fa, fb, gemm._scaled_mm(fa, fb, torch.float32))
        assert int(counter.item()) == 40 - 16  # the step would be redone ...
    grown = gemm.grow_row_slots(DEV)  # ... and the next ones get slots for twice the 40 rows' fraction
    assert grown == pytest.approx(min(gemm.ROW_FIX_MAX_FRACTION, 2 * 40 / m), abs=2 / 2**20)
    assert gemm.row_fix_capacity(m) == 64 and gemm.row_fix_capacity(64) == 16
    gemm.dump_deficient_report(str(tmp_path / "report.json"))  # the diagnostics dump says so too
    assert json.loads((tmp_path / "report.json").read_text())["stats"]["row_slots_fraction"] == grown
    assert gemm.grow_row_slots(DEV) is None  # read once: the same slots stay
    fa, fb = _fast_pair(a_t, b_t, write_packed=True, row_flags=True)
    out = gemm._scaled_mm(fa, fb, torch.float32)
    gemm._fix_rows(fa, fb, out)
    assert int(fa.count.item()) == 0
    exact = fa.dequantize().double() @ fb.dequantize().double().t()
    err = row_err(out, exact)
    assert err < (1e-4 if DEV == "cuda" else 1e-6), err


def test_row_slots_growth_is_bounded(default_row_slots):
    gemm = default_row_slots
    with deferred.deferred_check(DEV):
        gemm.simulate_row_overflow(DEV, 0.5)  # half the rows flagged: more than slots may ever cost
    assert gemm.grow_row_slots(DEV) == gemm.ROW_FIX_MAX_FRACTION
    assert [gemm.row_fix_capacity(m) for m in (20, 320, 32768)] == [16, 32, 2048]
    with deferred.deferred_check(DEV):
        gemm.simulate_row_overflow(DEV, 0.5)
    assert gemm.grow_row_slots(DEV) is None  # no more growth: such steps are redone (with a backoff)


def test_small_gemms_do_not_grow_the_slots(default_row_slots):
    """A GEMM of under 256 rows cannot get more than its 16 default slots (the 1/16 bound), so its
    overflow must not give every large GEMM the maximum."""
    gemm = default_row_slots
    g = torch.Generator().manual_seed(14)
    a_t = torch.randn(64, 128, generator=g)
    a_t[:20, 0:32] = torch.tensor([1.0, -1.0]).repeat(16) * 2.0**40  # 20 flagged rows, 16 slots
    with deferred.deferred_check(DEV) as counter:
        fa, fb = _fast_pair(a_t, torch.randn(32, 128, generator=g), write_packed=True, row_flags=True)
        gemm._fix_rows(fa, fb, gemm._scaled_mm(fa, fb, torch.float32))
        assert int(counter.item()) == 4  # the step is redone ...
    assert gemm.grow_row_slots(DEV) is None  # ... with a backoff, not with grown slots


def test_row_fix_capacity_and_empty_operand(default_row_slots):
    gemm = default_row_slots

    assert [gemm.row_fix_capacity(m) for m in (0, 5, 64, 9000, 32768)] == [0, 5, 16, 32, 64]
    k = 256
    empty = FastOperand(
        torch.empty(0, k, dtype=torch.float8_e5m2, device=DEV),
        torch.empty(k // 128, 0, device=DEV),
        torch.zeros(1, dtype=torch.int32, device=DEV),
        torch.empty(0, k // 2, dtype=torch.uint8, device=DEV),
        torch.empty(0, k // 32, dtype=torch.uint8, device=DEV),
        row_flags=torch.empty(0, dtype=torch.uint8, device=DEV),
    )
    b = fused_quantize(torch.randn(32, k).to(DEV), hadamard_size=None)
    fb = FastOperand(b["fp8"], b["gscale"], b["count"], b["packed"], b["scales"])
    out = torch.empty(0, 32, device=DEV)
    gemm._fix_rows(empty, fb, out)  # an MoE expert without tokens: nothing to do, nothing raised
    assert int(empty.count.item()) == 0


def test_fix_rows_falls_back_when_the_fp8_gemm_is_refused(monkeypatch):
    from adahop.kernels import gemm

    g = torch.Generator().manual_seed(12)
    a_t = torch.randn(64, 256, generator=g)
    a_t[7, 0:32] = torch.tensor([1.0, -1.0]).repeat(16) * 2.0**45
    b_t = torch.randn(48, 256, generator=g)
    b_t[:, 0:32] = torch.randn(48, 1, generator=g)
    fa, fb = _fast_pair(a_t, b_t, write_packed=True, row_flags=True)
    out = gemm._scaled_mm(fa, fb, torch.float32)

    def refuse(*args, **kwargs):
        raise RuntimeError("refused (test)")

    monkeypatch.setattr(gemm, "_scaled_mm_parts", refuse)
    before = gemm.stats()["fallback_gemms"]
    gemm._fix_rows(fa, fb, out)
    assert gemm.stats()["fallback_gemms"] == before + 1
    exact = fa.dequantize().double() @ fb.dequantize().double().t()
    err = row_err(out, exact)
    assert err < 1e-5, err


def test_row_flags_need_the_packed_form():
    with pytest.raises(ValueError, match="write_packed=True"):
        fused_quantize(torch.randn(32, 128).to(DEV), row_flags=True, write_packed=False)


def test_deficient_blocks_recorded_by_slot_only_while_recording():
    """kernels.deficient_report: a per-GEMM checked GEMM records where its operands lost blocks (by slot and
    side) while recording is on, and nothing while it is off (the default); importing gemm arms nothing."""
    from adahop import backend
    from adahop.kernels import gemm

    a = torch.randn(128, 256)
    a[3, :32] *= 2.0**40  # blocks 1..3 of row 3 sit 40 binades below block 0: beyond even the wide fp8 form
    b = torch.randn(128, 256)
    real = backend.fast_device
    backend.fast_device = lambda device: DEV == "cpu" or real(device)
    try:
        fa, _ = backend.quantize(a.to(DEV), hadamard_size=None)
        fb, _ = backend.quantize(b.to(DEV), hadamard_size=None)
        gemm.reset_stats()
        backend.matmul(fa, fb, torch.float32, tag="forward_y")
        assert gemm.deficient_by_tag() == {}
        gemm.record_deficient(True)
        fa, _ = backend.quantize(a.to(DEV), hadamard_size=None)
        backend.matmul(fa, fb, torch.float32, tag="forward_y")
        assert gemm.deficient_by_tag()["forward_y:a"]["deficient"] > 0, gemm.deficient_by_tag()
    finally:
        gemm.record_deficient(False)
        gemm.reset_stats()
        backend.fast_device = real
