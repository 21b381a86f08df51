"""The AdaHOP linear under torch.compile: its two custom ops trace whole (fullgraph) and give the same bits as
eager, in every mode, with stochastic rounding from the same seed (CPU: the torch reference through the ops)."""

import itertools

import pytest
import torch

from adahop.linear import AdaHOPLinear, LinearRecipe, linear_backward, linear_forward
from adahop.modes import FULL_PRECISION, HADAMARD, MODES, NONE, OE_LEFT, OE_RIGHT


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own model: the same forward code with other recipes would pile up recompiles."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _block(modes, sr=False, randomized=False):
    torch.manual_seed(0)
    kw = dict(
        forward_y=modes[0],
        backward_gx=modes[1],
        backward_gw=modes[2],
        use_sr_grad=sr,
        randomized_hadamard=randomized,
        outlier_k=8,
        hadamard_seed=7,
    )
    return torch.nn.Sequential(
        AdaHOPLinear(64, 96, bias=False, **kw), torch.nn.SiLU(), AdaHOPLinear(96, 64, bias=True, **kw)
    )


def _step(model, x, seed):
    torch.manual_seed(seed)  # stochastic rounding draws its seeds from torch's generator
    xx = x.clone().requires_grad_(True)
    y = model(xx)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return y.detach(), xx.grad, grads


def _inputs(dtype):
    torch.manual_seed(1)
    x = torch.randn(2, 40, 64)  # 80 tokens: the weight gradient's K is padded to 96
    x[..., 5] *= 50  # a channel outlier, so OE modes pick real rows
    x[0, 3] *= 20  # a token outlier
    return x.to(dtype)


MODE_TRIPLES = [(m, m, m) for m in MODES] + [
    (OE_LEFT, OE_RIGHT, FULL_PRECISION),
    (NONE, FULL_PRECISION, OE_RIGHT),
    (OE_RIGHT, OE_LEFT, HADAMARD),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("modes", MODE_TRIPLES, ids=lambda m: "/".join(m))
def test_compiled_block_gives_the_eager_bits(modes, dtype):
    model = _block(modes).to(dtype)
    x = _inputs(dtype)
    eager = _step(model, x, seed=3)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = _step(compiled, x, seed=3)
    for e, g in zip(itertools.chain([eager[0], eager[1]], eager[2]), itertools.chain([got[0], got[1]], got[2])):
        assert e.dtype == g.dtype and torch.equal(e, g)


@pytest.mark.parametrize("randomized", [False, True])
def test_compiled_stochastic_rounding_draws_as_eager(randomized):
    """SR from the same torch seed: same bits compiled and eager; another seed gives other bits (so the
    comparison could fail)."""
    model = _block((HADAMARD, HADAMARD, HADAMARD), sr=True, randomized=randomized)
    x = _inputs(torch.float32)
    eager = _step(model, x, seed=5)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert all(torch.equal(a, b) for a, b in zip(eager[2], _step(compiled, x, seed=5)[2]))
    assert not all(torch.equal(a, b) for a, b in zip(eager[2], _step(compiled, x, seed=6)[2]))


def test_inference_under_compile_quantizes_nothing_for_backward():
    model = _block((OE_RIGHT, OE_RIGHT, OE_RIGHT))
    x = _inputs(torch.float32)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    assert torch.equal(want, got)


@pytest.mark.parametrize("modes", MODE_TRIPLES, ids=lambda m: "/".join(m))
def test_custom_ops_pass_opcheck(modes):
    """torch.library.opcheck: schema, fake shapes/dtypes against the real outputs, autograd registration."""
    recipe = LinearRecipe(*modes, outlier_k=8)
    torch.manual_seed(2)
    x = torch.randn(80, 64, requires_grad=True)
    w = torch.randn(96, 64, requires_grad=True)
    torch.library.opcheck(linear_forward, (x, w, recipe.key, True, True, [], []))
    out = linear_forward(x.detach(), w.detach(), recipe.key, True, True, [], [])
    saved = list(out[1:])
    keep_x = x.detach() if modes[2] == FULL_PRECISION else torch.empty(0)
    keep_w = w.detach() if modes[1] != OE_RIGHT else torch.empty(0)
    gy = torch.randn(80, 96)
    torch.library.opcheck(
        linear_backward,
        (gy, keep_x, keep_w, saved, recipe.key, True, True, 64, torch.float32, torch.float32),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_layers_of_the_same_modes_share_one_key():
    """The custom ops' recipe key is a compile-time constant: layers that differ only in their (unused)
    random-signs seed must share it, or every block would compile a graph of its own."""
    a, b = LinearRecipe(hadamard_seed=1), LinearRecipe(hadamard_seed=2)
    assert a.key == b.key and LinearRecipe.from_key(a.key).forward_y == HADAMARD
    ra, rb = (
        LinearRecipe(randomized_hadamard=True, hadamard_seed=1),
        LinearRecipe(randomized_hadamard=True, hadamard_seed=2),
    )
    assert ra.key != rb.key and LinearRecipe.from_key(ra.key).hadamard_seed == 1
    assert LinearRecipe(forward_y=NONE).key != a.key


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_linears_reading_one_x_quantize_it_once_compiled(backend, monkeypatch):
    """q, k and v read the same x: eager quantizes it per linear (three left operands, three saved x^T),
    a compiled training step once per form (adahop.x_operands), with the same gradients."""
    from adahop import backend as mx_backend

    calls = {"left": 0, "saved": 0}
    quantize = mx_backend.quantize

    def counting(t, **kw):
        if t.shape == x2d.shape and torch.equal(t, x2d):  # x itself (not W, not the output gradients)
            calls["saved" if kw.get("packed") else "left"] += 1
        return quantize(t, **kw)

    monkeypatch.setattr(mx_backend, "quantize", counting)

    class QKV(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (AdaHOPLinear(64, n, bias=False) for n in (64, 32, 32))

        def forward(self, x):
            return self.q(x).sum() + 2 * self.k(x).sum() + 3 * self.v(x).sum()

    torch.manual_seed(0)
    model, x = QKV(), torch.randn(4, 32, 64)
    x2d = x.reshape(-1, 64)

    def step(f):
        calls.update(left=0, saved=0)
        f(x).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return grads, dict(calls)

    eager, eager_calls = step(model)
    compiled, compiled_calls = step(torch.compile(model, backend=backend, fullgraph=True))
    assert eager_calls == {"left": 3, "saved": 3}
    assert compiled_calls == {"left": 1, "saved": 1}
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))


@pytest.mark.parametrize("checkpointed", [False, True])
def test_torchtitan_llama_blocks_compiled_quantize_each_x_once(checkpointed):
    """The real model: torchtitan's Llama blocks with AdaHOP linears, compiled per block (fullgraph) as torchtitan
    compiles them, with and without activation checkpointing. Eager quantizes x once per linear (7 per layer, and
    again in the recomputation); compiled, once per q/k/v, o, w1/w3 and w2 input (4 per layer)."""
    import collections

    from test_converter import _nano
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.profiler import ProfilerActivity, profile

    model = _nano()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "output":
                setattr(module, name, AdaHOPLinear.from_linear(child))
    layers = len(model.layers)
    if checkpointed:
        for key, block in model.layers.named_children():
            model.layers.register_module(key, checkpoint_wrapper(block, preserve_rng_state=False))
    tokens = torch.randint(0, model.vocab_size, (2, 64))

    def counted_step():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(tokens).float().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        calls = collections.Counter(e.name for e in prof.events() if e.name.startswith("adahop::quantize_"))
        return calls, grads

    eager, eager_grads = counted_step()
    for key, block in model.layers.named_children():
        model.layers.register_module(key, torch.compile(block, backend="aot_eager", fullgraph=True))
    counted_step()  # compiles
    compiled, compiled_grads = counted_step()
    runs = 2 if checkpointed else 1  # the checkpointed forward runs again in backward
    for op in ("adahop::quantize_left_operand", "adahop::quantize_saved_operand"):
        assert eager[op] == 7 * layers * runs and compiled[op] == 4 * layers * runs, (eager, compiled)
    assert all(torch.equal(a, b) for a, b in zip(eager_grads, compiled_grads))
