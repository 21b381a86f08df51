"""The MXFP4 grouped GEMM (MoE experts) and MXFP4 attention under torch.compile: their custom ops trace whole
(fullgraph) and give the same bits as eager, in every mode, with stochastic rounding from the same seed (CPU:
the torch reference through the ops). Their numerics against the float64 definitions are tested in
test_grouped.py, test_moe.py and test_attention.py."""

import itertools

import pytest
import torch

from adahop.attention import MXFP4Attention, attention_backward, attention_forward
from adahop.grouped import MXFP4GroupedMM, grouped_backward, grouped_forward
from adahop.linear import LinearRecipe
from adahop.modes import FULL_PRECISION, HADAMARD, MODES, NONE, OE_LEFT, OE_RIGHT, SLOTS
from adahop.moe import AdaHOPGroupedExperts

moe_mod = pytest.importorskip("torchtitan.models.moe.moe")

IN, OUT = 64, 96
COUNTS = [37, 0, 5, 64, 0, 1]  # ragged, empty, tiny, aligned
PAD_ROWS = 7  # alignment padding after the last group
MODE_TRIPLES = [(m, m, m) for m in MODES] + [
    (OE_LEFT, OE_RIGHT, FULL_PRECISION),
    (NONE, FULL_PRECISION, OE_RIGHT),
    (OE_RIGHT, OE_LEFT, HADAMARD),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own function: other recipes of the same code would pile up recompiles."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(fn):
    return torch.compile(fn, backend="aot_eager", fullgraph=True)


def _operands(dtype=torch.float32, counts=COUNTS, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts) + PAD_ROWS, IN, generator=g)
    x[:, 3] *= 20  # a channel outlier, so OE modes pick real rows
    w = torch.randn(len(counts), OUT, IN, generator=g) * 0.1
    return x.to(dtype), w.to(dtype)


def _step(fn, tensors, seed):
    """Outputs and gradients of fn(*tensors) under a fixed torch seed (stochastic rounding draws from it)."""
    torch.manual_seed(seed)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    return [y.detach()] + [t.grad for t in leaves]


def _amp_step(fn, tensors, seed, backward_under_autocast):
    """_step under BF16 autocast as torchtitan runs it (backward after the autocast region), or with backward
    inside it too (then autocast reaches an eager backward but not a compiled one)."""
    torch.manual_seed(seed)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(*leaves)
        loss = (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum()
        if backward_under_autocast:
            loss.backward()
    if not backward_under_autocast:
        loss.backward()
    return [y.detach()] + [t.grad for t in leaves]


def _assert_same_bits(want, got):
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.dtype == g.dtype and torch.equal(w, g)


# ------------------------------------------------------------------------------------------ grouped GEMM


@pytest.mark.parametrize("sr", [False, True], ids=["nearest", "sr"])
@pytest.mark.parametrize("modes", MODE_TRIPLES, ids=lambda m: "/".join(m))
def test_compiled_grouped_gives_the_eager_bits(modes, sr):
    mod = MXFP4GroupedMM(LinearRecipe(*modes, use_sr_grad=sr, outlier_k=4))
    sizes = torch.tensor(COUNTS)
    eager = _step(lambda x, w: mod(x, w, sizes), _operands(), seed=3)
    compiled = _compile(mod)
    _assert_same_bits(eager, _step(lambda x, w: compiled(x, w, sizes), _operands(), seed=3))


ONE_CALL_TRIPLES = [
    (HADAMARD,) * 3,
    (NONE,) * 3,
    (FULL_PRECISION,) * 3,
    (HADAMARD, NONE, FULL_PRECISION),
    (NONE, HADAMARD, OE_RIGHT),
    (HADAMARD, OE_LEFT, OE_RIGHT),
]


@pytest.mark.parametrize("sr", [False, True], ids=["nearest", "sr"])
@pytest.mark.parametrize("modes", ONE_CALL_TRIPLES, ids=lambda m: "/".join(m))
def test_compiled_grouped_in_one_call_gives_the_eager_bits(modes, sr):
    """bf16 operands: every group in one call (adahop.grouped_mm), compiled as eager."""
    from adahop import grouped_mm

    recipe = LinearRecipe(*modes, use_sr_grad=sr, outlier_k=4)
    assert all(grouped_mm.in_one_call(recipe, slot, torch.bfloat16, torch.bfloat16) for slot in SLOTS)
    mod = MXFP4GroupedMM(recipe)
    sizes = torch.tensor(COUNTS)
    eager = _step(lambda x, w: mod(x, w, sizes), _operands(torch.bfloat16), seed=3)
    compiled = _compile(mod)
    _assert_same_bits(eager, _step(lambda x, w: compiled(x, w, sizes), _operands(torch.bfloat16), seed=3))


@pytest.mark.parametrize("randomized", [False, True])
def test_compiled_grouped_stochastic_rounding_draws_as_eager(randomized):
    """Same seed: same bits compiled and eager; another seed gives other gradients (the comparison can fail)."""
    mod = MXFP4GroupedMM(LinearRecipe(use_sr_grad=True, randomized_hadamard=randomized, hadamard_seed=7))
    sizes = torch.tensor(COUNTS)
    eager = _step(lambda x, w: mod(x, w, sizes), _operands(), seed=5)
    compiled = _compile(mod)
    _assert_same_bits(eager, _step(lambda x, w: compiled(x, w, sizes), _operands(), seed=5))
    other = _step(lambda x, w: compiled(x, w, sizes), _operands(), seed=6)
    assert torch.equal(eager[0], other[0])  # forward rounds to nearest
    assert not torch.equal(eager[1], other[1]) and not torch.equal(eager[2], other[2])


def test_new_group_sizes_reuse_the_compiled_graph():
    """The sizes are a tensor read inside the ops: other sizes (also with every row in one group, or none in
    any) run the same graph, without a recompile, and give the eager bits."""
    mod = MXFP4GroupedMM(LinearRecipe(backward_gx=OE_RIGHT, outlier_k=4))
    compiled = _compile(mod)
    x, w = _operands()
    t = x.shape[0]
    _step(lambda a, b: compiled(a, b, torch.tensor(COUNTS)), (x, w), seed=0)
    with torch.compiler.set_stance("fail_on_recompile"):
        for counts in ([t, 0, 0, 0, 0, 0], [0] * 6, [1, 2, 3, 4, 5, 6], [20, 20, 20, 20, 20, 14]):
            sizes = torch.tensor(counts)
            want = _step(lambda a, b, sizes=sizes: mod(a, b, sizes), (x, w), seed=1)
            _assert_same_bits(want, _step(lambda a, b, sizes=sizes: compiled(a, b, sizes), (x, w), seed=1))


@pytest.mark.parametrize("backward_under_autocast", [False, True])
def test_compiled_grouped_under_autocast_gives_the_eager_bits(backward_under_autocast):
    """torchtitan's mixed precision on one device: BF16 operands and output, as eager (adahop/amp.py)."""
    mod = MXFP4GroupedMM(LinearRecipe(forward_y=OE_LEFT, backward_gx=OE_RIGHT, backward_gw=OE_RIGHT, outlier_k=4))
    sizes = torch.tensor(COUNTS)
    eager = _amp_step(lambda x, w: mod(x, w, sizes), _operands(), 2, backward_under_autocast)
    assert eager[0].dtype == torch.bfloat16 and eager[2].dtype == torch.float32  # weight gradient as the parameter
    compiled = _compile(mod)
    _assert_same_bits(eager, _amp_step(lambda x, w: compiled(x, w, sizes), _operands(), 2, backward_under_autocast))


def test_compiled_grouped_inference_gives_the_eager_bits():
    mod = MXFP4GroupedMM(LinearRecipe(*(OE_RIGHT,) * 3, outlier_k=4))
    x, w = _operands()
    with torch.no_grad():
        assert torch.equal(mod(x, w, COUNTS), _compile(mod)(x, w, COUNTS))  # sizes as a list too


def test_observer_runs_eagerly_and_is_left_out_of_the_compiled_graph():
    mod = MXFP4GroupedMM(LinearRecipe())
    seen = []
    mod.observer = lambda kind, t: seen.append(kind)
    sizes = torch.tensor(COUNTS)
    eager = _step(lambda x, w: mod(x, w, sizes), _operands(), seed=0)
    assert seen == ["x", "w", "g"]
    seen.clear()
    _assert_same_bits(eager, _step(lambda x, w: _compile(mod)(x, w, sizes), _operands(), seed=0))
    assert seen == []


def _experts(sr):
    """AdaHOPGroupedExperts with three stacks of different modes, ragged and empty groups, padding rows."""
    torch.manual_seed(0)
    ex = moe_mod.GroupedExperts(dim=IN, hidden_dim=OUT, num_experts=4, use_grouped_mm=False)
    with torch.no_grad():
        ex.init_weights(0.05)
    modes = {
        "w1": (HADAMARD, OE_RIGHT, NONE),
        "w2": (OE_LEFT, HADAMARD, OE_RIGHT),
        "w3": (NONE, FULL_PRECISION, HADAMARD),
    }
    AdaHOPGroupedExperts.from_experts(ex, {n: LinearRecipe(*m, use_sr_grad=sr, outlier_k=4) for n, m in modes.items()})
    sizes = torch.tensor([40, 0, 13, 43])
    return ex, sizes, torch.randn(int(sizes.sum()) + 4, IN)


def _experts_step(ex, sizes, x, fn):
    torch.manual_seed(4)
    xx = x.clone().requires_grad_(True)
    y = fn(xx, sizes)
    y.square().mean().backward()
    grads = [xx.grad] + [p.grad.clone() for p in ex.parameters()]
    ex.zero_grad(set_to_none=True)
    return [y.detach()] + grads


@pytest.mark.parametrize("sr", [False, True], ids=["nearest", "sr"])
def test_compiled_experts_give_the_eager_bits(sr):
    """AdaHOPGroupedExperts (silu gating of two grouped GEMMs, then the third) compiled whole."""
    ex, sizes, x = _experts(sr)
    eager = _experts_step(ex, sizes, x, ex)
    assert len(eager) == 5 and all(g.abs().sum() > 0 for g in eager)
    _assert_same_bits(eager, _experts_step(ex, sizes, x, _compile(ex)))


def test_experts_compiled_with_inductor_give_the_eager_bits():
    """inductor (the trainer's backend) checks the real outputs' strides against the fake ones and fuses the
    code around the ops (silu gating); caches off, so that the fake implementations of this code are used.
    Nearest rounding: inductor may run the independent backward ops of w1 and w3 in the other order than eager
    autograd, and stochastic rounding then draws other bits (docs/kernels.md)."""
    ex, sizes, x = _experts(False)
    eager = _experts_step(ex, sizes, x, ex)
    with torch._inductor.config.patch(force_disable_caches=True):
        _assert_same_bits(eager, _experts_step(ex, sizes, x, torch.compile(ex, fullgraph=True)))


@pytest.mark.parametrize(
    "modes, dtype",
    [(m, torch.float32) for m in MODE_TRIPLES] + [(m, torch.bfloat16) for m in ONE_CALL_TRIPLES],
    ids=lambda v: "/".join(v) if isinstance(v, tuple) else str(v).removeprefix("torch."),
)
def test_grouped_ops_pass_opcheck(modes, dtype):
    """torch.library.opcheck: schema, fake shapes/dtypes against the real outputs (the saved parts' shapes
    depend on the input shapes only, for the per-group loop and the one-call path alike), autograd
    registration, dynamic-shape tracing."""
    recipe = LinearRecipe(*modes, outlier_k=4)
    x, w = _operands(dtype)
    sizes = torch.tensor(COUNTS)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    torch.library.opcheck(grouped_forward, (xr, wr, sizes, recipe.key, True, True))
    out = grouped_forward(x, w, sizes, recipe.key, True, True)
    keep_x = x if modes[2] == FULL_PRECISION else torch.empty(0)
    keep_w = w if modes[1] != OE_RIGHT else torch.empty(0)
    gy = torch.randn(x.shape[0], OUT).to(dtype)
    torch.library.opcheck(
        grouped_backward,
        (gy, keep_x, keep_w, sizes, list(out[1:]), recipe.key, True, True, IN, dtype, dtype),
        test_utils=("test_schema", "test_faketensor"),
    )


# ------------------------------------------------------------------------------------------ attention


def _qkv(dtype, heads_kv=4, tq=64, tk=64):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, tq, 64, generator=g)
    q[..., 5] *= 10  # an outlier channel along head_dim
    k, v = torch.randn(2, heads_kv, tk, 64, generator=g), torch.randn(2, heads_kv, tk, 64, generator=g)
    return tuple(t.to(dtype) for t in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sr, causal, gqa", list(itertools.product([False, True], [True, False], [False, True])))
def test_compiled_attention_gives_the_eager_bits(sr, causal, gqa, dtype):
    mod = MXFP4Attention(hadamard_size=32, use_sr_grad=sr)
    qkv = _qkv(dtype, heads_kv=2 if gqa else 4)
    call = lambda fn: lambda q, k, v: fn(q, k, v, is_causal=causal, enable_gqa=gqa)  # noqa: E731
    eager = _step(call(mod), qkv, seed=3)
    assert eager[0].dtype == dtype
    _assert_same_bits(eager, _step(call(_compile(mod)), qkv, seed=3))


def test_compiled_attention_stochastic_rounding_draws_as_eager():
    mod = MXFP4Attention(hadamard_size=16, use_sr_grad=True)
    qkv = _qkv(torch.float32, tq=32, tk=96)  # fewer queries than keys
    eager = _step(mod, qkv, seed=5)
    compiled = _compile(mod)
    _assert_same_bits(eager, _step(compiled, qkv, seed=5))
    other = _step(compiled, qkv, seed=6)
    assert torch.equal(eager[0], other[0]) and not any(torch.equal(a, b) for a, b in zip(eager[1:], other[1:]))


@pytest.mark.parametrize("backward_under_autocast", [False, True])
def test_compiled_attention_under_autocast_gives_the_eager_bits(backward_under_autocast):
    mod = MXFP4Attention()
    eager = _amp_step(mod, _qkv(torch.float32), 0, backward_under_autocast)
    assert eager[0].dtype == torch.bfloat16 and eager[1].dtype == torch.float32
    _assert_same_bits(eager, _amp_step(_compile(mod), _qkv(torch.float32), 0, backward_under_autocast))


@pytest.mark.parametrize("sr", [False, True], ids=["nearest", "sr"])
def test_attention_compiled_with_inductor_gives_the_eager_bits(sr):
    """q, k, v transposed from [B, T, H, D] as torchtitan's attention passes them: inductor checks the gradients'
    strides against the fake implementation's; caches off, so that this code's fake implementations are used."""
    mod = MXFP4Attention(use_sr_grad=sr)
    qkv = tuple(t.transpose(1, 2).contiguous() for t in _qkv(torch.float32))  # leaves [B, T, H, D]
    call = lambda fn: lambda q, k, v: fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # noqa: E731
    eager = _step(call(mod), qkv, seed=3)
    with torch._inductor.config.patch(force_disable_caches=True):
        _assert_same_bits(eager, _step(call(torch.compile(mod, fullgraph=True)), qkv, seed=3))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_ops_pass_opcheck(causal):
    # [B, T, H, D] transposed to [B, H, T, D], as torchtitan's attention passes them: the gradients' strides are
    # the GEMMs' (contiguous), not the inputs'
    q, k, v = (
        t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True) for t in _qkv(torch.float32, tq=32, tk=96)
    )
    assert not q.is_contiguous()
    torch.library.opcheck(attention_forward, (q, k, v, 0.125, causal, 32, False))
    o, p = attention_forward(q.detach(), k.detach(), v.detach(), 0.125, causal, 32, False)
    for sr in (False, True):  # stochastic rounding draws anew each call: fake shapes and schema only
        torch.library.opcheck(
            attention_backward,
            (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o, p, 0.125, 32, sr),
            test_utils=("test_schema", "test_faketensor"),
        )


# ------------------------------------------------------------------------------------------ GPU fast path


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
    reason="needs CUDA sm90+ (the fused quantizer and fp8 GEMMs)",
)
@pytest.mark.parametrize("sr", [False, True], ids=["nearest", "sr"])
@pytest.mark.parametrize("mode", MODES)
def test_grouped_and_attention_compiled_with_inductor_on_the_fast_path(mode, sr):
    """On the GPU fast path (groups whose padded tokens are multiples of 128 take it for the weight gradient,
    the others the reference): inductor-compiled grouped GEMM and attention give the eager bits, BF16."""
    counts = torch.tensor([256, 0, 3, 200, 0, 128, 53], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(int(counts.sum()) + 8, 256, device="cuda", generator=g).bfloat16()
    w = (torch.randn(len(counts), 384, 256, device="cuda", generator=g) / 16).bfloat16()
    mod = MXFP4GroupedMM(LinearRecipe(mode, mode, mode, use_sr_grad=sr, outlier_k=8))
    eager = _step(lambda a, b: mod(a, b, counts), (x, w), seed=3)
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(mod, fullgraph=True)
        _assert_same_bits(eager, _step(lambda a, b: compiled(a, b, counts), (x, w), seed=3))
    torch._dynamo.reset()
    att = MXFP4Attention(use_sr_grad=sr)
    qkv = tuple(torch.randn(2, 256, 8, 64, device="cuda", generator=g).bfloat16() for _ in range(3))  # [B, T, H, D]
    call = lambda fn: lambda q, k, v: fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # noqa: E731
    eager = _step(call(att), qkv, seed=5)
    with torch._inductor.config.patch(force_disable_caches=True):
        _assert_same_bits(eager, _step(call(torch.compile(att, fullgraph=True)), qkv, seed=5))
