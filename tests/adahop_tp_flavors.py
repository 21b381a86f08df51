"""Loaded by the tensor-parallel training tests through torchtitan's --experimental.custom_import: the nano
flavor with two KV heads (nano's one KV head of 32 cannot be split over 2 TP ranks)."""

import dataclasses

import adahop_test_flavors  # noqa: F401  (registers the models and the other test flavors)
from torchtitan.protocols.train_spec import get_train_spec

_spec = get_train_spec("adahop_llama3")
_spec.model_args.setdefault("nano_tp", dataclasses.replace(_spec.model_args["nano"], n_kv_heads=2))
