"""The "adahop_qwen3" train spec: upstream Qwen3 (dense and MoE) plus small MoE flavors with the
embedded tokenizer's vocabulary, for enable_mxfp4_gmm on CPU and on one GPU.

| flavor | dim | layers | heads / kv | head_dim | experts (top-k) | expert ffn | params |
| --- | --- | --- | --- | --- | --- | --- | --- |
| moe_nano | 64 | 2 | 2 / 1 | 32 | 4 (2) | 64 | ~1.2M (tests) |
| moe_tiny | 128 | 4 | 4 / 2 | 32 | 8 (2) | 128 | ~3.5M (CPU default MoE) |
| moe_small | 1024 | 8 | 16 / 8 | 64 | 32 (4) | 512 | ~0.6B total (one GPU) |

Expert stacks and attention have dims that are multiples of 32; the router gate (dim -> experts) is
not, which is why MoE configs keep "router.gate" in filter_fqns.
"""

from __future__ import annotations

from torchtitan.models.moe import MoEArgs
from torchtitan.models.qwen3 import get_train_spec as _qwen3_train_spec
from torchtitan.models.qwen3.model.args import Qwen3ModelArgs
from torchtitan.protocols.train_spec import TrainSpec

from adahop.models.llama3 import extend_train_spec


def _moe(dim, layers, heads, kv, head_dim, experts, top_k, inter, use_grouped_mm) -> Qwen3ModelArgs:
    return Qwen3ModelArgs(
        vocab_size=8192,
        max_seq_len=4096,
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        qk_norm=True,
        hidden_dim=4 * dim,
        rope_theta=1000000,
        moe_enabled=True,
        moe_inter_dim=inter,
        moe_args=MoEArgs(
            num_experts=experts,
            num_shared_experts=0,
            top_k=top_k,
            score_func="softmax",
            route_norm=True,
            route_scale=1.0,
            score_before_experts=False,
            use_grouped_mm=use_grouped_mm,
        ),
    )


MOE_FLAVORS: dict[str, Qwen3ModelArgs] = {
    # torch._grouped_mm needs a GPU: the CPU flavors run the BF16 baseline's experts as a loop
    "moe_nano": _moe(64, 2, 2, 1, 32, 4, 2, 64, use_grouped_mm=False),
    "moe_tiny": _moe(128, 4, 4, 2, 32, 8, 2, 128, use_grouped_mm=False),
    "moe_small": _moe(1024, 8, 16, 8, 64, 32, 4, 512, use_grouped_mm=True),
}


def get_train_spec() -> TrainSpec:
    return extend_train_spec(_qwen3_train_spec(), MOE_FLAVORS)
