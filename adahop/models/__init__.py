"""Model flavors / train specs registered into torchtitan by adahop.titan.setup()."""

from __future__ import annotations

TRAIN_SPEC_NAME = "adahop_llama3"


def register_models() -> list[str]:
    """Register our train spec(s) with torchtitan (idempotent). Returns the registered names."""
    from torchtitan.protocols import train_spec as ts

    from adahop.models.llama3 import get_train_spec

    if TRAIN_SPEC_NAME not in ts._extra_train_specs:
        ts.register_train_spec(TRAIN_SPEC_NAME, get_train_spec())
    return [TRAIN_SPEC_NAME]
