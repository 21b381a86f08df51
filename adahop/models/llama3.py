"""The "adahop_llama3" train spec: upstream llama3 (same model, parallelize, pipelining, loss, ...)
with extra flavors and a parallelize function that makes FSDP work over gloo.

Flavors (all linear dims are multiples of 32, the MX block):

| flavor | dim | layers | heads | kv heads | ffn | vocab | params |
| --- | --- | --- | --- | --- | --- | --- | --- |
| nano (tests) | 64 | 2 | 2 | 1 | 192 | 8192 | ~1.1M |
| tiny | 256 | 4 | 4 | 2 | 768 | 8192 | ~6.5M |
| 125M | 768 | 12 | 12 | 4 | 2048 | 32768 | ~130M |
| 1B (Llama-3.2-1B shape) | 2048 | 16 | 32 | 8 | 8192 | 128256 | ~1.5B (untied output) |
| 3B (Llama-3.2-3B shape) | 3072 | 28 | 24 | 8 | 8192 | 128256 | ~3.6B (untied output) |
| 1B_v8k / 3B_v8k | as 1B / 3B | | | | | 8192 | body as above, vocabulary of the embedded tokenizer |

plus every upstream llama3 flavor (debugmodel, 8B, 70B, 405B, ...). Vocabularies larger than the
tokenizer's are fine (unused rows); they must not be smaller.
"""

from __future__ import annotations

import dataclasses
import functools

from torchtitan.models.llama3 import get_train_spec as _llama3_train_spec
from torchtitan.models.llama3.model.args import TransformerModelArgs
from torchtitan.protocols.train_spec import TrainSpec
from torchtitan.tools.logging import logger

from adahop.titan.gloo import force_sum_reduction_on_gloo

ADAHOP_FLAVORS: dict[str, TransformerModelArgs] = {
    # for tests: seconds per step on a CPU core
    "nano": TransformerModelArgs(
        dim=64,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        vocab_size=8192,
        multiple_of=64,
        rope_theta=500000,
    ),
    "tiny": TransformerModelArgs(
        dim=256,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=8192,
        multiple_of=256,
        rope_theta=500000,
    ),
    # the quality experiment's model (docs/quality.md): ~88M parameters with the 8k vocabulary
    "100M_v8k": TransformerModelArgs(
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        vocab_size=8192,
        multiple_of=256,
        rope_theta=500000,
    ),
    "125M": TransformerModelArgs(
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        vocab_size=32768,
        multiple_of=256,
        rope_theta=500000,
    ),
    # Llama-3.2-1B: hidden = 1.5 * (2/3 * 4 * 2048) -> 8192
    "1B": TransformerModelArgs(
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        vocab_size=128256,
        ffn_dim_multiplier=1.5,
        multiple_of=256,
        rope_theta=500000,
    ),
    # Llama-3.2-3B: hidden = 1.0 * (2/3 * 4 * 3072) -> 8192
    "3B": TransformerModelArgs(
        dim=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        vocab_size=128256,
        ffn_dim_multiplier=1.0,
        multiple_of=256,
        rope_theta=500000,
    ),
}
# the same bodies with the embedded tokenizer's vocabulary (8192): the configs in configs/ use these
for _name in ("1B", "3B"):
    ADAHOP_FLAVORS[f"{_name}_v8k"] = dataclasses.replace(ADAHOP_FLAVORS[_name], vocab_size=8192)


def wrap_parallelize_fn(parallelize_fn):
    """Run upstream's parallelize function, then switch FSDP to SUM reductions when on gloo."""

    @functools.wraps(parallelize_fn)
    def parallelize(model, parallel_dims, job_config, *args, **kwargs):
        model = parallelize_fn(model, parallel_dims, job_config, *args, **kwargs)
        n = force_sum_reduction_on_gloo(model)
        if n:
            logger.info(f"[adahop] gloo backend: FSDP reduce-scatter set to SUM on {n} modules")
        return model

    parallelize._adahop_wrapped = True  # type: ignore[attr-defined]
    return parallelize


def extend_train_spec(base: TrainSpec, flavors: dict) -> TrainSpec:
    """`base` with our extra flavors and the gloo-safe parallelize function; nothing else changes."""
    return dataclasses.replace(
        base, model_args={**base.model_args, **flavors}, parallelize_fn=wrap_parallelize_fn(base.parallelize_fn)
    )


def get_train_spec() -> TrainSpec:
    return extend_train_spec(_llama3_train_spec(), ADAHOP_FLAVORS)
