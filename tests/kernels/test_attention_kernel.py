"""The flash-style MXFP4 attention kernels (adahop.kernels.attention) against the torch reference (adahop.attention's
attention_forward / attention_backward, which materialize P):

- the operand kernel gives the reference's MXFP4 values bit for bit (along head_dim after the Hadamard, or along
  the sequence; nearest, and stochastic with the reference's own draws) on adversarial inputs; its quantizer is
  the one the attention kernels apply to P and dS tile by tile;
- forward and backward agree with the reference (causal and not, GQA, Tq != Tk, head_dim not a power of two);
- stochastic rounding is unbiased and repeats under the same torch seed;
- the custom ops pass opcheck and compile to the eager bits.

Runs on CUDA when present, else on the CPU with TRITON_INTERPRET=1 (see conftest.py), where the dots are float32
and the results match the reference to float32 rounding; on the GPU the bf16 tensor-core dots sum in another
order, which can move a P or dS value across an E2M1 rounding boundary, hence the looser GPU tolerances."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import adahop.attention as att
from adahop.hadamard import block_hadamard
from adahop.kernels import attention as flash
from adahop.mx import fake_quantize_mxfp4

DEV = "cuda" if torch.cuda.is_available() else "cpu"
GPU = DEV == "cuda"


@pytest.fixture
def use_flash(monkeypatch):
    """The attention layer takes the flash kernels on this device (the CPU runs them in the interpreter)."""
    monkeypatch.setattr(att, "flash_device", lambda device: True)


def reference_operand(x, along_sequence=False, hadamard_size=0, rounding="nearest", generator=None):
    """adahop.attention's operand: float32 Hadamard along head_dim, then MXFP4 along head_dim or the sequence."""
    x = x.to(torch.float32)
    if hadamard_size:
        x = block_hadamard(x, axis=-1, block=hadamard_size)
    return fake_quantize_mxfp4(x, axis=-2 if along_sequence else -1, rounding=rounding, generator=generator)


def same_values(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal values with NaN in the same places (the kernel writes bf16 on the GPU: every MXFP4 value is one)."""
    got = got.float().cpu()
    want = want.cpu()
    nan = want.isnan()
    return torch.equal(nan, got.isnan()) and torch.equal(got[~nan], want[~nan])


def adversarial(b, h, t, d, seed=0):
    """[b, h, t, d] float32 with the cases the quantizer must get right, in blocks along both axes: E2M1 ties
    (0.25, 2.5, 5 times a power of two), values that saturate (7.9 * 2^e in a block whose max sets e), zeros,
    subnormal floats, 2^100, a NaN and an infinity."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, t, d, generator=g)
    x[0, 0, 0, :32] = torch.tensor([0.25, 2.5, 5.0, 7.9, 1.75, 3.5, 0.75, -2.5] * 4) * 2.0**3
    x[0, 0, 1, :32] = 0.0
    x[0, 0, 2:4] *= 2.0**-135  # subnormal in float32
    x[0, 0, 4] *= 2.0**100
    x[0, 0, :, 40] = torch.linspace(-3, 3, t) * 2.0**-6  # ties along the sequence too
    x[-1, -1, 5, 7] = float("nan")
    x[-1, -1, 9, 3] = float("inf")
    x[-1, 0, 32:64, :] = 0.0
    return x


@pytest.mark.parametrize(
    "along_sequence, hadamard_size, d",
    [(False, 0, 128), (False, 32, 128), (False, 128, 128), (True, 0, 128), (False, 32, 96), (True, 0, 96)],
)
def test_operand_is_the_reference_bit_for_bit(along_sequence, hadamard_size, d):
    x = adversarial(2, 3, 64, d)
    # [B, T, H, D] transposed to [B, H, T, D], as torchtitan's attention passes q, k, v
    strided = x.transpose(1, 2).contiguous().transpose(1, 2).to(DEV)
    got = flash.operand(strided, along_sequence=along_sequence, hadamard_size=hadamard_size)
    assert got.is_contiguous() and got.dtype == flash.OPERAND_DTYPE
    assert same_values(got, reference_operand(x, along_sequence, hadamard_size))


def test_operand_of_bf16_input():
    x = adversarial(1, 2, 96, 64).to(torch.bfloat16)
    got = flash.operand(x.to(DEV), hadamard_size=32)
    assert same_values(got, reference_operand(x, hadamard_size=32))


@pytest.mark.parametrize("along_sequence", [False, True])
def test_operand_stochastic_with_the_reference_draws(along_sequence):
    """The reference draws torch.rand over its blocks (quantized axis last); the kernel reads the same draws."""
    x = adversarial(1, 2, 64, 64, seed=3)
    want = reference_operand(x, along_sequence, 0, "stochastic", torch.Generator().manual_seed(7))
    draws = torch.rand((1, 2, 64, 64), generator=torch.Generator().manual_seed(7))  # [..., quantized axis last]
    uniforms = draws.transpose(-1, -2) if along_sequence else draws
    got = flash.operand(x.to(DEV), along_sequence=along_sequence, uniforms=uniforms.to(DEV))
    assert same_values(got, want)
    assert not same_values(got, reference_operand(x, along_sequence))  # it did round stochastically


def test_operand_stochastic_philox_is_unbiased_and_seeded_by_torch():
    """Values between two grid points: the mean over draws is the value; torch's seed fixes the draws."""
    x = torch.full((1, 1, 32, 64), 5.0)
    x[..., 0] = 6.0  # every block's max: exponent 0 (grid step 1 between 2 and 4: 2.3 -> 2 or 3)
    x[..., 1:] = 2.3
    torch.manual_seed(0)
    draws = torch.stack([flash.operand(x.to(DEV), stochastic=True).float().cpu() for _ in range(64)])
    assert set(draws[..., 1:].unique().tolist()) == {2.0, 3.0}
    mean = draws[..., 1:].mean()
    assert abs(mean - 2.3) < 0.02, mean  # 64 * 32 * 63 draws: standard error 0.001
    torch.manual_seed(0)
    assert torch.equal(flash.operand(x.to(DEV), stochastic=True).float().cpu(), draws[0])


@pytest.mark.parametrize("hadamard_size", [0, 32])
def test_operands_give_both_forms_bit_for_bit(hadamard_size):
    """One read of x, both forms: along head_dim after the Hadamard, and along the sequence without it."""
    x = adversarial(2, 3, 64, 96, seed=5)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2).to(DEV)
    along_d, along_t = flash.operands(strided, hadamard_size=hadamard_size)
    assert same_values(along_d, reference_operand(x, hadamard_size=hadamard_size))
    assert same_values(along_t, reference_operand(x, along_sequence=True))


def test_operands_stochastic_with_the_reference_draws():
    """Each form reads its own given draws, as operand() does (test_operand_stochastic_with_the_reference_draws)."""
    x = adversarial(1, 2, 64, 64, seed=6)
    want_d = reference_operand(x, False, 32, "stochastic", torch.Generator().manual_seed(8))
    want_t = reference_operand(x, True, 0, "stochastic", torch.Generator().manual_seed(9))
    draws = [torch.rand((1, 2, 64, 64), generator=torch.Generator().manual_seed(s)) for s in (8, 9)]
    uniforms = (draws[0].to(DEV), draws[1].transpose(-1, -2).to(DEV))
    along_d, along_t = flash.operands(x.to(DEV), hadamard_size=32, uniforms=uniforms)
    assert same_values(along_d, want_d) and same_values(along_t, want_t)


def test_operands_draw_as_two_operand_calls():
    """Philox: the pair is what operand() gives for each form called in that order under the same torch seed."""
    x = torch.randn(1, 2, 64, 64).to(DEV)
    torch.manual_seed(3)
    pair = flash.operands(x, hadamard_size=32, stochastic=True)
    torch.manual_seed(3)
    one = flash.operand(x, hadamard_size=32, stochastic=True)
    assert torch.equal(pair[0], one)
    assert torch.equal(pair[1], flash.operand(x, along_sequence=True, stochastic=True))
    assert not torch.equal(pair[0], flash.operand(x, hadamard_size=32))  # it did round stochastically


def test_operand_refuses_shapes_it_cannot_block():
    with pytest.raises(ValueError, match="multiples of 32"):
        flash.operand(torch.zeros(1, 1, 48, 64, device=DEV))
    with pytest.raises(ValueError, match="along head_dim"):
        flash.operand(torch.zeros(1, 1, 64, 64, device=DEV), along_sequence=True, hadamard_size=32)


@triton.jit
def _probabilities_kernel(x_ptr, out_ptr, R: tl.constexpr, C: tl.constexpr):
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tl.store(out_ptr + offs, flash._fake_quantize_probabilities(tl.load(x_ptr + offs), R, C))


def probabilities(b, seed=0):
    """[b, 128] float32 >= 0 as E and P hold them (at most 2), blocks of 32 with the cases the rounding on the
    block's own scale must get right: E2M1 ties and the values beside them, saturation (7.9 and 7 * 2^e next to
    the max 1.0 * 2^(e+3)), zeros, subnormal floats, blocks whose exponent is clamped to -127, exp2-like values,
    a block at 2, and a NaN with the sign bit set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp2(-torch.rand(b, 128, generator=g) * 30)
    grid = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 7.9, 6.0, 0.5, 0.0])
    for row in range(min(b, 16)):
        e = -3 - 9 * row
        block = torch.cat([grid, grid * (1 + 2.0**-20), grid * (1 - 2.0**-20), torch.tensor([8.0] * 8)])[:32]
        x[row, :32] = block * 2.0**e  # the 8.0 entries set the block's exponent to e
    x[0, 32:64] = 0.0
    x[1, 32:64] = torch.rand(32, generator=g) * 2.0**-130  # subnormal: exponent -127
    x[2, 32:64] = torch.rand(32, generator=g) * 2.0**-124  # normal values in a block clamped to -127
    x[3, 32:64] = 2.0 - torch.rand(32, generator=g)
    x[4, 96] = -float("nan")
    return x


def test_quantizer_of_probabilities_is_the_reference_bit_for_bit():
    """E and P's quantizer (rounding on each block's own scale, no sign) gives fake_quantize_mxfp4's values."""
    x = probabilities(32)
    got = torch.empty_like(x, device=DEV)
    _probabilities_kernel[(1,)](x.to(DEV), got, R=32, C=128)
    assert same_values(got, fake_quantize_mxfp4(x, axis=-1))
    assert got[4, 96:].isnan().all() and not got[4, :96].isnan().any()


def run(q, k, v, do, **kwargs):
    """(o, dq, dk, dv) of mxfp4_attention in float32."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = att.mxfp4_attention(q, k, v, **kwargs)
    o.backward(do)
    return [t.detach().float().cpu() for t in (o, q.grad, k.grad, v.grad)]


def close(got, want, name):
    """Float32 rounding apart on the interpreter; on the GPU, the rare P / dS that the bf16 dots' summation order
    moves across a rounding boundary changes one term: a small fraction of entries, bounded."""
    scale = want.abs().max()
    err = (got - want).abs()
    if GPU:
        assert err.max() <= 0.05 * scale and err.mean() <= 2e-3 * scale, (name, err.max(), err.mean(), scale)
    else:
        assert err.max() <= 1e-5 * scale, (name, err.max(), scale)


CASES = [  # (heads, kv heads, tq, tk, head_dim, causal)
    (2, 2, 64, 64, 64, True),
    (4, 2, 96, 160, 32, False),
    (2, 1, 160, 96, 64, True),
    (2, 2, 128, 64, 96, False),
    # key and query tiles that every row sees whole (computed without masks) before, between and after the
    # masked ones: the dK/dV kernel's 128-key blocks inside and past the diagonal, a partial last query tile
    (2, 1, 288, 256, 32, True),
]


@pytest.mark.parametrize("quantize_dp", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "h{}kv{}_q{}k{}_d{}_causal{}".format(*c))
def test_flash_forward_and_backward_agree_with_the_reference(case, quantize_dp, use_flash, monkeypatch):
    hq, hkv, tq, tk, d, causal = case
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, t, d, generator=g) for h, t in ((hq, tq), (hkv, tk), (hkv, tk)))
    q[0, 0, :8] *= 8.0  # peaked rows: P near one-hot, with tiny entries
    v[0, 0, 3] *= 2.0**-20
    do = torch.randn(2, hq, tq, d, generator=g)
    kw = dict(is_causal=causal, enable_gqa=hq != hkv, quantize_dp=quantize_dp)
    got = run(q.to(DEV), k.to(DEV), v.to(DEV), do.to(DEV), **kw)
    monkeypatch.setattr(att, "flash_device", lambda device: False)
    want = run(q.to(DEV), k.to(DEV), v.to(DEV), do.to(DEV), **kw)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        close(a, b, name)


def test_flash_keeps_a_nan_row_to_itself(use_flash, monkeypatch):
    """A NaN in one query row makes that output row NaN and no other, as in the reference."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 64, 32, generator=g) for _ in range(3))
    q[0, 1, 7, 3] = float("nan")
    o = att.mxfp4_attention(q.to(DEV), k.to(DEV), v.to(DEV)).cpu()
    monkeypatch.setattr(att, "flash_device", lambda device: False)
    want = att.mxfp4_attention(q, k, v)
    assert torch.equal(o.isnan(), want.isnan()) and o.isnan().any()
    close(o.nan_to_num(), want.nan_to_num(), "o")


def test_flash_stochastic_gradients_repeat_under_a_seed_and_average_as_the_reference(use_flash, monkeypatch):
    """Same torch seed, same gradients; and the mean over draws is the reference's mean over its own draws (both
    estimate the gradient with dO and dS unrounded; nearest rounding would be off it by a fixed bias)."""
    g = torch.Generator().manual_seed(4)
    q, k, v, do = (torch.randn(1, 2, 64, 32, generator=g).to(DEV) for _ in range(4))
    torch.manual_seed(11)
    first = run(q, k, v, do, use_sr_grad=True)[1:]
    torch.manual_seed(11)
    assert all(torch.equal(a, b) for a, b in zip(run(q, k, v, do, use_sr_grad=True)[1:], first))
    draws = [first] + [run(q, k, v, do, use_sr_grad=True)[1:] for _ in range(15)]
    assert not torch.equal(draws[1][0], first[0])
    monkeypatch.setattr(att, "flash_device", lambda device: False)
    reference = [run(q, k, v, do, use_sr_grad=True)[1:] for _ in range(16)]
    for i, name in enumerate(("dq", "dk", "dv")):
        ref_mean = torch.stack([r[i] for r in reference]).mean(0)
        one = (first[i] - ref_mean).abs().mean()  # one draw's noise
        mean = (torch.stack([d[i] for d in draws]).mean(0) - ref_mean).abs().mean()  # about sqrt(2 / 16) of it
        assert mean < 0.5 * one, (name, mean, one)


def test_flash_under_autocast_takes_the_autocast_dtype(use_flash):
    if not GPU:
        pytest.skip("autocast to bf16 on the interpreter would hand it bf16 inputs it has no arithmetic for")
    q, k, v = (torch.randn(1, 2, 64, 64, device=DEV) for _ in range(3))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        o = att.mxfp4_attention(q, k, v)
    assert o.dtype == torch.bfloat16


@pytest.mark.parametrize("causal", [True, False])
def test_flash_ops_pass_opcheck(causal):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 64, 4, 32, generator=g).transpose(1, 2).to(DEV)  # strided, as torchtitan passes them
    k, v = (torch.randn(1, 2, 64, 32, generator=g).to(DEV) for _ in range(2))
    torch.library.opcheck(att.flash_attention_forward, (q, k, v, 0.125, causal, 32, False))
    o, stats = att.flash_attention_forward(q, k, v, 0.125, causal, 32, False)
    do = torch.randn_like(o)
    torch.library.opcheck(att.flash_attention_backward, (do, q, k, v, o, stats, 0.125, causal, 32, False))


def test_compiled_flash_attention_gives_the_eager_bits(use_flash):
    g = torch.Generator().manual_seed(6)
    q, k, v, do = (torch.randn(1, 2, 64, 32, generator=g).to(DEV) for _ in range(4))
    layer = att.MXFP4Attention(hadamard_size=32)
    want = run(q, k, v, do)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    qc, kc, vc = (t.clone().requires_grad_() for t in (q, k, v))
    o = compiled(qc, kc, vc, is_causal=True)
    o.backward(do)
    for a, b in zip((o, qc.grad, kc.grad, vc.grad), want):
        assert torch.equal(a.detach().float().cpu(), b)


@pytest.mark.skipif(not GPU, reason="peak GPU memory")
def test_flash_memory_grows_linearly_with_the_sequence(use_flash):
    peaks = []
    for t in (2048, 8192):
        q, k, v = (torch.randn(1, 8, t, 128, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        att.mxfp4_attention(q, k, v).backward(torch.ones_like(q))
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] < 5 * peaks[0], peaks  # 4x the tokens: 4x linear, 16x quadratic


def test_flash_ops_refuse_operands_they_would_read_past():
    """The custom ops may be called directly: a v shorter than k, or stats of another shape, is refused."""
    q, k = torch.randn(1, 2, 64, 32, device=DEV), torch.randn(1, 2, 128, 32, device=DEV)
    with pytest.raises(ValueError, match="k = v"):
        att.flash_attention_forward(q, k, torch.randn(1, 2, 32, 32, device=DEV), 0.2, False, 32, False)
    o, stats = att.flash_attention_forward(q, k, k, 0.2, False, 32, False)
    with pytest.raises(ValueError, match="stats"):
        att.flash_attention_backward(o, q, k, k, o, stats[..., :1], 0.2, False, 32, False)
    with pytest.raises(ValueError, match="do and o like q"):
        att.flash_attention_backward(o, q, k, k, o[:, :, :32], stats, 0.2, False, 32, False)
    with pytest.raises(TypeError, match="float32"):
        att.flash_attention_backward(o, q, k, k, o, stats.half(), 0.2, False, 32, False)
    with pytest.raises(TypeError, match="float tensors"):
        att.mxfp4_attention(q.to(torch.int32), k.to(torch.int32), k.to(torch.int32))
    with pytest.raises(ValueError, match="hadamard_size"):
        att.flash_attention_forward(q, k, k, 0.2, False, 0, False)
    with pytest.raises(ValueError, match="key length to be a positive multiple"):
        att.flash_attention_forward(q, k[:, :, :0], k[:, :, :0], 0.2, False, 32, False)


def test_flash_backward_reads_strided_stats_as_values(use_flash):
    g = torch.Generator().manual_seed(8)
    q, k, v, do = (torch.randn(1, 2, 64, 32, generator=g).to(DEV) for _ in range(4))
    o, stats = att.flash_attention_forward(q, k, v, 0.2, True, 32, False)
    strided = stats.transpose(-1, -2).contiguous().transpose(-1, -2)
    want = att.flash_attention_backward(do, q, k, v, o, stats, 0.2, True, 32, False)
    got = att.flash_attention_backward(do, q, k, v, o, strided, 0.2, True, 32, False)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_flash_keeps_a_nan_out_of_the_keys_its_row_cannot_see(use_flash):
    """Causal: a NaN in query row 5 reaches dV only of the keys row 5 sees (0..5), whatever the tiles, and dQ only
    in row 5, as in the reference. (dK multiplies by Q quantized along the sequence, whose NaN block covers 32
    positions: a masked zero times it is NaN in any GEMM, so there the NaN spreads as far as the tiles that meet
    it.)"""
    g = torch.Generator().manual_seed(9)
    q, k, v, do = (torch.randn(1, 1, 128, 32, generator=g).to(DEV) for _ in range(4))
    q[0, 0, 5, 0] = float("nan")
    o, dq, dk, dv = run(q, k, v, do)
    assert o[0, 0].isnan().any(-1).nonzero().flatten().tolist() == [5]
    assert dq[0, 0].isnan().any(-1).nonzero().flatten().tolist() == [5]  # a NaN score is no masked one
    nan_keys = dv[0, 0].isnan().any(-1).nonzero().flatten().tolist()
    assert nan_keys == list(range(6)), nan_keys
    assert dk.isnan().any()


def test_compiled_layer_chooses_its_path_on_the_device_as_eager():
    """No patch: the device decides (flash on CUDA, the reference on the CPU), also while dynamo traces the layer
    whole, and compiled gives the eager bits."""
    g = torch.Generator().manual_seed(10)
    q, k, v, do = (torch.randn(1, 2, 64, 32, generator=g).to(DEV) for _ in range(4))
    want = run(q, k, v, do)
    compiled = torch.compile(att.MXFP4Attention(hadamard_size=32), backend="aot_eager", fullgraph=True)
    qc, kc, vc = (t.clone().requires_grad_() for t in (q, k, v))
    o = compiled(qc, kc, vc, is_causal=True)
    o.backward(do)
    for a, b in zip((o, qc.grad, kc.grad, vc.grad), want):
        assert torch.equal(a.detach().float().cpu(), b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gqa_sum_is_its_reference_bit_for_bit(dtype):
    """dK and dV of the query heads that share a key/value head, float32, summed in order and rounded once; a
    length that leaves a partial block, and values whose order of addition matters."""
    if dtype != torch.float32 and not GPU:
        pytest.skip("Triton's interpreter truncates float32 -> 16-bit conversions (the GPU rounds to nearest)")
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 8, 96, 48, generator=g)
    x[:, ::4] *= 2.0**24 if dtype != torch.float16 else 2.0**12  # big first heads: order shows in the sums
    got = flash.gqa_sum(x.to(DEV), 4, dtype).cpu()
    want = flash.gqa_sum_reference(x, 4, dtype)
    assert got.dtype == dtype and torch.equal(got, want)
    if dtype == torch.float32:  # the order shows in the bits
        assert not torch.equal(want, x.view(2, 2, 4, 96, 48).double().sum(2).to(dtype))


def test_flash_backward_gets_no_zero_gradient_for_the_row_statistics(use_flash):
    """The stats output is non-differentiable and its gradient not materialized: backward fills no zero tensor
    (tests/test_op_gradients.py checks the reference and the linear ops the same way)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Fills(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name in ("aten::zeros", "aten::zeros_like", "aten::new_zeros", "aten::fill_"):
                self.names.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    q, k, v = (torch.randn(1, 2, 64, 32, device=DEV, requires_grad=True) for _ in range(3))
    o = att.mxfp4_attention(q, k, v)
    with Fills() as fills:
        o.sum().backward()
    assert fills.names == [] and q.grad is not None
