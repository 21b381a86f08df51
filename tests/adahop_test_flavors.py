"""Loaded by end-to-end tests through torchtitan's --experimental.custom_import: registers a model
flavor whose output layer is not a multiple of 32 (vocab 8200), to exercise the dims check."""

import dataclasses

from adahop.models import register_models

register_models()

from torchtitan.protocols.train_spec import get_train_spec  # noqa: E402

_spec = get_train_spec("adahop_llama3")
_spec.model_args.setdefault("nano_odd_vocab", dataclasses.replace(_spec.model_args["nano"], vocab_size=8200))
