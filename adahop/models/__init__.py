"""Model flavors / train specs registered into torchtitan by adahop.titan.setup()."""

from __future__ import annotations

TRAIN_SPEC_NAME = "adahop_llama3"
MOE_TRAIN_SPEC_NAME = "adahop_qwen3"


def register_models() -> list[str]:
    """Register our train specs with torchtitan (idempotent). Returns the registered names."""
    from torchtitan.protocols import train_spec as ts

    from adahop.models import llama3, qwen3_moe

    for name, module in ((TRAIN_SPEC_NAME, llama3), (MOE_TRAIN_SPEC_NAME, qwen3_moe)):
        if name not in ts._extra_train_specs:
            ts.register_train_spec(name, module.get_train_spec())
    return [TRAIN_SPEC_NAME, MOE_TRAIN_SPEC_NAME]
