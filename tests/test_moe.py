"""AdaHOPGroupedExperts against torchtitan's own expert computation, on CPU.

(torchtitan's router counts tokens with torch.histc on int64, which has no CPU kernel, so these
tests drive the experts module directly with routed tokens, as MoE.forward does.)
"""

import pytest
import torch

from adahop.linear import LinearRecipe
from adahop.moe import AdaHOPGroupedExperts

moe_mod = pytest.importorskip("torchtitan.models.moe.moe")
COUNTS = torch.tensor([40, 0, 13, 43])  # ragged, one empty expert


def build(dim=64, hidden=96, experts=4):
    torch.manual_seed(0)
    ex = moe_mod.GroupedExperts(dim=dim, hidden_dim=hidden, num_experts=experts, use_grouped_mm=False)
    with torch.no_grad():
        ex.init_weights(0.05)
    return ex


def test_full_precision_experts_match_upstream_loop():
    ex = build()
    x = torch.randn(int(COUNTS.sum()) + 4, 64)
    want = moe_mod._run_experts_for_loop(ex.w1, ex.w2, ex.w3, x, COUNTS)
    params = dict(ex.named_parameters())
    recipe = LinearRecipe(forward_y="full_precision", backward_gx="full_precision", backward_gw="full_precision")
    AdaHOPGroupedExperts.from_experts(ex, {n: recipe for n in ("w1", "w2", "w3")})
    assert dict(ex.named_parameters()) == params and set(ex.state_dict()) == set(params)  # same FQNs
    got = ex(x, COUNTS)
    assert ((got - want).norm() / want.norm()).item() < 1e-2  # BF16 operand rounding only


def test_mxfp4_experts_train_step_and_observe():
    ex = build()
    AdaHOPGroupedExperts.from_experts(ex, {n: LinearRecipe() for n in ("w1", "w2", "w3")})
    seen = []
    for name, layer in ex.grouped_layers().items():
        layer.observer = lambda kind, t, name=name: seen.append((name, kind))
    x = torch.randn(int(COUNTS.sum()), 64, requires_grad=True)
    want = moe_mod._run_experts_for_loop(ex.w1, ex.w2, ex.w3, x, COUNTS)
    out = ex(x, COUNTS)
    assert 0.01 < ((out - want).norm() / want.norm()).item() < 0.5  # MXFP4, not exact, not garbage
    out.square().mean().backward()
    assert torch.all(ex.w1.grad[1] == 0) and torch.isfinite(ex.w2.grad).all() and x.grad is not None
    assert {("w1", "x"), ("w2", "w"), ("w3", "g")} <= set(seen)


def test_bad_expert_dims_refused():
    ex = build(dim=64, hidden=40)
    with pytest.raises(ValueError, match="multiples of 32"):
        AdaHOPGroupedExperts.from_experts(ex, {n: LinearRecipe() for n in ("w1", "w2", "w3")})
