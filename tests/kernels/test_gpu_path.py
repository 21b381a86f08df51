"""The CUDA sm90+ fast path of adahop.backend (fused kernels + fp8 GEMM) against the torch reference
([quantize.linear.mx.kernels] reference_only), on the GPU. Skipped without one; run by `bash scripts/gpu.sh tests`
on the device."""

from __future__ import annotations

import math

import pytest
import torch

from adahop import backend, x_operands
from adahop.kernels import deferred, gemm, state
from adahop.linear import mxfp4_linear
from adahop.modes import FULL_PRECISION, HADAMARD, NONE, OE_LEFT, OE_RIGHT, SLOTS

cuda_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="needs CUDA sm90+"
)
pytestmark = cuda_sm90

# Hopper's fp8 tensor cores do not keep a full fp32 accumulator inside each 128-long K chunk (cuBLAS
# promotes to fp32 between chunks): measured 3.6e-6 relative error of the fp8 GEMM against the exact
# (float64) product of the same quantized operands, where a float32 GEMM gives ~1e-7. The bound below
# is that, with margin; it is ~500x below bf16's rounding of the output.
FP8_ACC_TOL = 2e-5


class forced_reference:
    """The torch reference on the GPU too (what [quantize.linear.mx.kernels] reference_only sets)."""

    def __enter__(self):
        self.old = state.active().force_reference
        state.active().force_reference = True

    def __exit__(self, *exc):
        state.active().force_reference = self.old


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def row_err(out, exact):
    """Largest error of `out` relative to the largest magnitude of its row of `exact` (each row on its own
    scale, so that small rows must be right too)."""
    return ((out.double() - exact).abs() / exact.abs().amax(1, keepdim=True)).max()


def fast_and_reference(a, b, hsize, tile_b=False):
    """a @ b^T through the fast path and through the reference: (fast out, reference out, fast left
    operand, reference operands)."""
    fa, _ = backend.quantize(a, hadamard_size=hsize)
    fb, _ = backend.quantize(b, hadamard_size=hsize)
    out = backend.matmul(fa, fb, torch.float32, tile_b=tile_b)
    with forced_reference():
        ra, _ = backend.quantize(a, hadamard_size=hsize)
        rb, _ = backend.quantize(b, hadamard_size=hsize)
        ref = backend.matmul(ra, rb, torch.float32)
    return out, ref, fa, ra, rb


@pytest.mark.parametrize("k_dim", [1, 0])
@pytest.mark.parametrize("hsize", [None, 32])
def test_backend_quantize_packed_matches_reference(k_dim, hsize):
    t = torch.randn(512, 384, device="cuda", dtype=torch.bfloat16) * 3
    op, saved = backend.quantize(t, k_dim=k_dim, hadamard_size=hsize, packed=True)
    assert op.is_fast()
    with forced_reference():
        op_r, saved_r = backend.quantize(t, k_dim=k_dim, hadamard_size=hsize, packed=True)
    assert not op_r.is_fast()
    assert torch.equal(saved.data, saved_r.data) and torch.equal(saved.scales, saved_r.scales)


@pytest.mark.parametrize("tile", [False, True])
@pytest.mark.parametrize("shape", [(256, 512, 384), (1000, 640, 256), (4096, 4096, 4096)])
def test_fp8_gemm_matches_reference_gemm(shape, tile):
    M, N, K = shape
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    a[:, 7] *= 40  # channel outlier
    out, ref, fa, ra, rb = fast_and_reference(a, b, 32, tile_b=tile)
    exact = ra.values.double() @ rb.values.double().t()
    assert rel(ref, exact) < 1e-6
    assert rel(out, exact) < FP8_ACC_TOL, rel(out, exact)
    # the fp8 form holds exactly the reference's quantized values
    fa_m = fa.materialize()
    assert torch.equal(fa_m.fp8_dequantize(), ra.values)


def test_deficient_blocks_are_corrected_and_counted():
    gemm.reset_stats()
    a = torch.randn(256, 512, device="cuda")
    a[3, :32] *= 2.0**22  # blocks 1..3 of row 3 sit > 14 exponents below block 0
    b = torch.randn(384, 512, device="cuda")
    b[:, 200] *= 2.0**25
    out, _, _, ra, rb = fast_and_reference(a, b, None)
    exact = ra.values.double() @ rb.values.double().t()
    assert gemm.stats()["deficient_blocks"] > 0 and gemm.stats()["corrected_gemms"] == 1
    assert rel(out, exact) < FP8_ACC_TOL
    # compare row by row: the small rows must be right too, not only the norm
    err = row_err(out, exact)
    assert err < 1e-4, err


def test_deferred_check_gemm_skips_the_sync_and_reports_dropped_blocks():
    """Inside deferred_check the GEMM runs without reading counts: equal to the synchronous path on
    ordinary data, and on data with deficient blocks the step's check raises (the trainer redoes it)."""

    a = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(384, 512, device="cuda", dtype=torch.bfloat16)
    sync_out = fast_and_reference(a, b, 32)[0]
    with deferred.deferred_check(torch.device("cuda", torch.cuda.current_device())):
        out = fast_and_reference(a, b, 32)[0]
        deferred.raise_if_deficient()
        assert torch.equal(out, sync_out)
        bad = a.float()
        bad[3, :32] *= 2.0**40  # beyond even the wide (e5m2) form of the left operand
        fast_and_reference(bad, b.float(), None)
        with pytest.raises(deferred.DeficientBlocksInStep):
            deferred.raise_if_deficient()


def test_nonfinite_propagates_like_reference():
    a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    a[5, 17] = float("nan")
    a[9, 100] = float("inf")
    b = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    out, ref, _, _, _ = fast_and_reference(a, b, 32)
    assert torch.equal(out.isnan(), ref.isnan())
    fin = ~ref.isnan()
    assert rel(out[fin], ref[fin]) < FP8_ACC_TOL


@pytest.mark.parametrize("hsize", [0, 32])
def test_x_left_operand_op_gives_the_linear_s_own_fp8_form(hsize):
    """adahop.x_operands' fast path writes the same wide fp8 form, scales and count as the linear's deferred
    operand, and holds exactly the reference's quantized values."""
    x = torch.randn(512, 384, device="cuda", dtype=torch.bfloat16)
    x[:, 3] *= 30
    x[5, :32] *= 2.0**-20
    fp8, gscale, count = x_operands.quantize_left_operand(x, hsize, -1, True)
    own = backend.quantize(x, hadamard_size=hsize or None)[0].materialize(left=True)
    assert fp8.dtype == own.fp8.dtype == torch.float8_e5m2
    assert torch.equal(fp8.view(torch.uint8), own.fp8.view(torch.uint8)) and torch.equal(gscale, own.gscale)
    assert int(count) == int(own.count)
    with forced_reference():
        values = x_operands.quantize_left_operand(x, hsize, -1, False)[0]
    assert values.dtype == torch.float32
    assert torch.equal(x_operands.left_operand([fp8, gscale, count], x, hsize, -1).fast.fp8_dequantize(), values)


def test_linear_x_beyond_the_wide_window_is_corrected_or_redoes_the_step():
    """x with a block 40 exponents below its group's largest: the wide fp8 form cannot hold it. Outside a
    deferred check the GEMM corrects it exactly (the packed form rewritten from x); inside one the step's
    check asks for the step to be redone."""
    gemm.reset_stats()
    x = torch.randn(256, 512, device="cuda")
    x[3, :32] *= 2.0**40
    w = torch.randn(384, 512, device="cuda") / 512**0.5
    kw = dict(forward_y=NONE, backward_gx=NONE, backward_gw=NONE)
    y = mxfp4_linear(x, w, **kw)
    with forced_reference():
        y_r = mxfp4_linear(x, w, **kw)
    assert gemm.stats()["corrected_gemms"] >= 1
    err = row_err(y, y_r.double())
    assert err < 1e-4, err
    with deferred.deferred_check(torch.device("cuda", torch.cuda.current_device())):
        mxfp4_linear(x, w, **kw)
        with pytest.raises(deferred.DeficientBlocksInStep):
            deferred.raise_if_deficient()


MODES = [HADAMARD, NONE, OE_LEFT, OE_RIGHT, FULL_PRECISION]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("randomized", [False, True])
def test_linear_fast_path_matches_reference(mode, dtype, randomized):
    torch.manual_seed(0)
    tokens, fin, fout = 512, 256, 384
    x = torch.randn(tokens, fin, device="cuda", dtype=dtype)
    x[:, 3] *= 30
    w = (torch.randn(fout, fin, device="cuda") / fin**0.5).to(dtype)
    gy = torch.randn(tokens, fout, device="cuda", dtype=dtype)
    kw = dict(forward_y=mode, backward_gx=mode, backward_gw=mode, randomized_hadamard=randomized, outlier_k=16)

    def run():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = mxfp4_linear(xx, ww, **kw)
        y.backward(gy)
        return y, xx.grad, ww.grad

    y, gx, gw = run()
    with forced_reference():
        y_r, gx_r, gw_r = run()
    tol = 3 * FP8_ACC_TOL if dtype == torch.float32 else 8e-3  # bf16: outputs rounded once, in either order
    for got, ref, name in ((y, y_r, "y"), (gx, gx_r, "gx"), (gw, gw_r, "gw")):
        assert got.dtype == ref.dtype
        assert rel(got, ref) < tol, (name, rel(got, ref))


@pytest.mark.parametrize("tile", ["forward", "weights", "all"])
@pytest.mark.parametrize("mode", ["hadamard", "inner_outlier_extract_left", "inner_outlier_extract_right", "none"])
def test_linear_with_128x128_right_scales_matches_reference(mode, tile, monkeypatch):
    """kernels.tile_b: every K / 128 here a multiple of 4 (512, 1024, 512), so the tile layout is taken."""
    torch.manual_seed(1)
    tokens, fin, fout = 512, 512, 1024
    x = torch.randn(tokens, fin, device="cuda", dtype=torch.bfloat16)
    x[:, 3] *= 30
    w = (torch.randn(fout, fin, device="cuda") / fin**0.5).to(torch.bfloat16)
    gy = torch.randn(tokens, fout, device="cuda", dtype=torch.bfloat16)
    kw = dict(forward_y=mode, backward_gx=mode, backward_gw=mode, outlier_k=16, tile_b=tile)

    def run():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = mxfp4_linear(xx, ww, **kw)
        y.backward(gy)
        return y, xx.grad, ww.grad

    tiled = {}
    real = gemm.fp8_matmul

    def recording(a, b, out_dtype, tag=None):
        tiled[tag] = b.tile
        return real(a, b, out_dtype, tag=tag)

    monkeypatch.setattr(gemm, "fp8_matmul", recording)
    gemm.reset_stats()
    got = run()
    with forced_reference():
        want = run()
    for g, r, name in zip(got, want, ("y", "gx", "gw")):
        assert rel(g, r) < 8e-3, (name, rel(g, r))
    assert gemm.stats()["fallback_gemms"] == 0
    assert tiled == {"forward_y": True, "backward_gx": tile != "forward", "backward_gw": tile == "all"}, tiled


def test_linear_stochastic_rounding_runs_and_is_unbiased_in_the_mean():
    torch.manual_seed(0)
    x = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(256, 256, device="cuda") / 16).to(torch.bfloat16)
    gy = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16)
    grads = []
    for _ in range(8):
        xx = x.clone().requires_grad_()
        mxfp4_linear(xx, w.requires_grad_(), use_sr_grad=True).backward(gy)
        grads.append(xx.grad.float())
        w.grad = None
    assert not torch.equal(grads[0], grads[1])  # fresh draws each step
    with forced_reference():
        xx = x.clone().requires_grad_()
        mxfp4_linear(xx, w, use_sr_grad=False).backward(gy)
    mean = torch.stack(grads).mean(0)
    exact = gy.float() @ w.float()
    assert rel(mean, exact) < rel(grads[0], exact)  # averaging SR draws gets closer to the true product


def _planted_gaps(rows, gap, shape, dtype=torch.float32):
    """Random [M, K] with, in the given rows, block 0 = +-2^gap alternating (its products with a constant
    block of the other operand cancel exactly, so the small blocks carry the whole result)."""
    t = torch.randn(*shape, device="cuda")
    t[rows, :32] = torch.tensor([1.0, -1.0], device="cuda").repeat(16) * 2.0**gap
    return t.to(dtype)


def test_wide_left_operand_holds_gaps_up_to_28():
    gemm.reset_stats()
    a = _planted_gaps([3, 77], 26, (256, 512))
    b = torch.randn(384, 512, device="cuda")
    b[:, :32] = torch.randn(384, 1, device="cuda")
    out, _, fa, ra, rb = fast_and_reference(a, b, None)
    exact = ra.values.double() @ rb.values.double().t()
    assert gemm.stats()["corrected_gemms"] == 0 and gemm.stats()["deficient_blocks"] == 0
    err = row_err(out, exact)
    assert err < 1e-4, err


def test_fix_rows_in_the_deferred_step_is_exact_and_counts_overflow():

    dev = torch.device("cuda", torch.cuda.current_device())
    b = torch.randn(384, 512, device="cuda")
    b[:, :32] = torch.randn(384, 1, device="cuda")
    a = _planted_gaps([3, 77, 200], 40, (1024, 512))
    with forced_reference():
        ra, _ = backend.quantize(a)
        rb, _ = backend.quantize(b)
    exact = ra.values.double() @ rb.values.double().t()
    before = gemm.rows_fixed()
    with deferred.deferred_check(dev):
        fa, _ = backend.quantize(a)
        fb, _ = backend.quantize(b)
        out = backend.matmul(fa, fb, torch.bfloat16, fix_rows=True)
        deferred.raise_if_deficient()  # nothing left out: the rows were recomputed
    assert gemm.rows_fixed() - before == 3
    err = row_err(out, exact)
    assert err < 2**-8, err  # bf16 output, rounded once
    many = _planted_gaps(list(range(0, 1024, 16)), 40, (1024, 512))  # 64 rows, room for 16
    with deferred.deferred_check(dev):
        fa, _ = backend.quantize(many)
        backend.matmul(fa, backend.quantize(b)[0], torch.bfloat16, fix_rows=True)
        with pytest.raises(deferred.DeficientBlocksInStep):
            deferred.raise_if_deficient()
    # the checked (per-GEMM) path with too many rows falls back to the exact correction
    fa, _ = backend.quantize(many)
    out = backend.matmul(fa, backend.quantize(b)[0], torch.float32, fix_rows=True)
    with forced_reference():
        rm, _ = backend.quantize(many)
    exact = rm.values.double() @ rb.values.double().t()
    err = row_err(out, exact)
    assert err < 1e-4, err


def test_linear_gradient_with_far_apart_blocks_matches_reference():
    """The input gradient (the slot with row fixes) of a linear whose output gradient has rows with blocks
    40 exponents apart: equal to the reference, in a deferred step that raises nothing."""

    torch.manual_seed(1)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(384, 256, device="cuda") / 16
    w[:32, :] = torch.randn(1, 256, device="cuda") / 16  # W rows 0..31 equal: g's block 0 cancels
    w = w.to(torch.bfloat16)
    gy = _planted_gaps([5, 300], 40, (512, 384), torch.bfloat16)

    def run():
        xx = x.clone().requires_grad_()
        mxfp4_linear(
            xx, w.clone().requires_grad_(), forward_y=NONE, backward_gx=NONE, backward_gw=FULL_PRECISION
        ).backward(gy)  # g^T along tokens would hold the gaps too
        return xx.grad

    with deferred.deferred_check(torch.device("cuda", torch.cuda.current_device())):
        gx = run()
        deferred.raise_if_deficient()
    with forced_reference():
        gx_r = run()
    for r in (5, 300, 0):
        assert rel(gx[r], gx_r[r]) < 8e-3, (r, rel(gx[r], gx_r[r]))


def test_grouped_gemm_with_empty_and_tiny_groups_on_the_fast_path():
    """MoE experts that get 0 or a few tokens (empty operands of the row-fixing input-gradient GEMM)."""
    from adahop.grouped import mxfp4_grouped_mm
    from adahop.linear import LinearRecipe

    torch.manual_seed(2)
    counts = torch.tensor([0, 3, 200, 0, 53])
    x = torch.randn(int(counts.sum()) + 8, 256, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(len(counts), 384, 256, device="cuda") / 16).to(torch.bfloat16)
    gy = torch.randn(x.shape[0], 384, device="cuda", dtype=torch.bfloat16)

    def run():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        mxfp4_grouped_mm(xx, ww, counts.cuda(), LinearRecipe()).backward(gy)
        return xx.grad, ww.grad

    gx, gw = run()
    with forced_reference():
        gx_r, gw_r = run()
    assert rel(gx, gx_r) < 8e-3 and rel(gw, gw_r) < 8e-3


@pytest.mark.parametrize("sr", [False, True])
@pytest.mark.parametrize(
    "modes",
    [
        ("hadamard",) * 3,
        ("none",) * 3,
        ("inner_outlier_extract_left",) * 3,
        ("inner_outlier_extract_right",) * 3,
        ("full_precision",) * 3,
        ("inner_outlier_extract_left", "inner_outlier_extract_right", "full_precision"),
    ],
    ids=lambda modes: "-".join(modes),
)
def test_linear_compiled_with_inductor_gives_the_eager_bits(modes, sr):
    """torch.compile (inductor, fullgraph) of an AdaHOP linear on the fast path: y, gx and gw are the eager bits,
    stochastic rounding included (the same torch seed draws the same Philox seeds)."""
    from adahop.linear import AdaHOPLinear

    torch._dynamo.reset()
    torch.manual_seed(3)
    layer = AdaHOPLinear(
        512,
        384,
        bias=False,
        device="cuda",
        dtype=torch.bfloat16,
        forward_y=modes[0],
        backward_gx=modes[1],
        backward_gw=modes[2],
        use_sr_grad=sr,
        outlier_k=16,
    )
    x = torch.randn(1000, 512, device="cuda", dtype=torch.bfloat16)
    x[:, 3] *= 30
    gy = torch.randn(1000, 384, device="cuda", dtype=torch.bfloat16)

    def run(fn):
        torch.manual_seed(11)
        xx = x.clone().requires_grad_()
        y = fn(xx)
        y.backward(gy)
        out = (y.detach(), xx.grad, layer.weight.grad.clone())
        layer.weight.grad = None
        return out

    eager = run(layer)
    compiled = run(torch.compile(layer, fullgraph=True))
    for e, c, name in zip(eager, compiled, ("y", "gx", "gw")):
        assert torch.equal(e, c), (name, rel(c, e))
    torch._dynamo.reset()


# The fp8 GEMM's outputs against the exact product of its MXFP4 operands, per output element, in units of the
# sum of |a_k b_k| over that element's K (what any float accumulation of those terms is measured against).
# fp32 accumulation in any order stays below ~K * 2^-24; the tensor cores' fp8 MMA keeps fewer bits inside a
# K-group, which shows where a group's products span many binades (channel outliers). The bound is what
# docs/kernels.md states for the fast path.
FP8_GROUP_ACC_BOUND = 2.0**-12


@pytest.mark.parametrize("case", ["gaussian", "channel_outliers", "gradient_row_outliers"])
def test_fp8_gemm_error_against_the_exact_product_is_within_the_stated_bound(case):
    torch.manual_seed(7)
    m, n, k = 2048, 2048, 4096
    a = torch.randn(m, k, device="cuda")
    b = torch.randn(n, k, device="cuda")
    if case == "channel_outliers":  # every 97th input channel x300 (x in y = x W^T)
        a[:, ::97] *= 300
    elif case == "gradient_row_outliers":  # every 131st K index x1e4 (g^T's tokens in gw = g^T x)
        a[:, ::131] *= 1e4
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    fa, _ = backend.quantize(a, hadamard_size=32)
    fb, _ = backend.quantize(b, hadamard_size=32)
    out = backend.matmul(fa, fb, torch.float32).double()
    with forced_reference():
        ra, _ = backend.quantize(a, hadamard_size=32)
        rb, _ = backend.quantize(b, hadamard_size=32)
    av, bv = ra.values.double(), rb.values.double()
    exact = av @ bv.t()
    scale = av.abs() @ bv.abs().t()
    err = ((out - exact).abs() / scale.clamp_min(1e-300)).max().item()
    print(f"{case}: max |fp8 - exact| / sum|terms| = {err:.3e} = 2^{math.log2(max(err, 1e-300)):.1f}")
    assert err <= FP8_GROUP_ACC_BOUND, (case, err)


@pytest.mark.parametrize(
    "modes",
    [
        (HADAMARD,) * 3,
        (NONE,) * 3,
        (FULL_PRECISION,) * 3,
        (HADAMARD, FULL_PRECISION, OE_RIGHT),
        (NONE, OE_LEFT, HADAMARD),
    ],
)
def test_grouped_gemms_in_one_call_agree_with_the_per_group_loop(modes, monkeypatch):
    """MoE experts in one call (adahop.grouped_mm: the fused quantizer, dequantized bf16 operands,
    torch._grouped_mm) against the per-group loop (fp8 GEMMs) on the GPU, with ragged, empty and tiny groups:
    the same MXFP4 operands, so only accumulation order and the bf16 rounding of the outputs differ."""
    from adahop import grouped_mm
    from adahop.grouped import mxfp4_grouped_mm
    from adahop.linear import LinearRecipe

    torch.manual_seed(4)
    counts = torch.tensor([0, 3, 200, 0, 53, 700], device="cuda")
    x = torch.randn(int(counts.sum()) + 8, 256, device="cuda", dtype=torch.bfloat16)
    x[:, 7] *= 50
    w = (torch.randn(len(counts), 384, 256, device="cuda") / 16).to(torch.bfloat16)
    gy = torch.randn(x.shape[0], 384, device="cuda", dtype=torch.bfloat16)
    recipe = LinearRecipe(*modes)

    def run():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        with deferred.deferred_check("cuda") as counter:
            y = mxfp4_grouped_mm(xx, ww, counts, recipe)
            y.backward(gy)
            deferred.raise_if_deficient()
        assert counter.item() == 0
        return y.detach(), xx.grad, ww.grad

    assert all(grouped_mm.in_one_call(recipe, slot, x.dtype, w.dtype) for slot in SLOTS)
    one_call = run()
    monkeypatch.setattr(grouped_mm, "in_one_call", lambda *a: False)
    loop = run()
    for a, b in zip(one_call, loop):
        assert rel(a, b) < 4e-3, rel(a, b)
    end = int(counts.sum())
    assert torch.all(one_call[0][end:] == 0) and torch.all(one_call[1][end:] == 0)
    assert torch.all(one_call[2][0] == 0) and torch.all(one_call[2][3] == 0)


def test_grouped_invalid_sizes_in_a_deferred_step_are_counted_not_fatal():
    """Sizes past x or negative inside a training step's deferred check: counted (the step is redone and the
    sizes refused there), and clamped for torch._grouped_mm, whose device-side check of its offsets would
    otherwise end the process."""
    from adahop.grouped import mxfp4_grouped_mm
    from adahop.linear import LinearRecipe

    x = torch.randn(40, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(3, 256, 256, device="cuda") / 16).to(torch.bfloat16).requires_grad_()
    for bad in ([30, 20, 15], [-8, 20, 5], [10**6, 0, 0]):
        for modes in ((HADAMARD,) * 3, (NONE, OE_LEFT, OE_RIGHT)):
            with deferred.deferred_check("cuda") as counter:
                y = mxfp4_grouped_mm(x, w, torch.tensor(bad, device="cuda"), LinearRecipe(*modes, outlier_k=8))
                y.sum().backward()
                assert counter.item() > 0, (bad, modes)
    torch.cuda.synchronize()  # the device is still usable
    assert torch.isfinite(x.grad).all()
