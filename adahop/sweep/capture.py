"""Operands of a config's model (fresh or from a checkpoint) over a few real training steps."""

from __future__ import annotations

import torch

from ..checkpoint_io import build_model, load_model_state
from ..config import check_dataset
from .offline import CapturedLayer, capture_operands


def training_steps(model, job_config):
    """A closure running one forward/backward step on the next batch of the config's training data."""
    from torchtitan.components.loss import IGNORE_INDEX, cross_entropy_loss
    from torchtitan.components.tokenizer import build_hf_tokenizer
    from torchtitan.hf_datasets.text_datasets import build_text_dataloader

    tokenizer = build_hf_tokenizer(job_config)
    batches = iter(build_text_dataloader(dp_world_size=1, dp_rank=0, tokenizer=tokenizer, job_config=job_config))
    device = next(model.parameters()).device

    def step() -> None:
        input_dict, labels = next(batches)
        labels = labels.to(device)
        loss = cross_entropy_loss(model(input_dict["input"].to(device)), labels) / (labels != IGNORE_INDEX).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def capture_from_config(
    job_config, checkpoint_path: str | None, steps: int, max_tokens: int
) -> dict[str, CapturedLayer]:
    """Build and convert the config's model (weights from `checkpoint_path` if given) and capture x, W, g
    of every AdaHOP layer over `steps` training steps."""
    from ..config import validate_job_config
    from ..converter import AdaHOPConverter
    from ..plan_wiring import wire

    validate_job_config(job_config)
    check_dataset(job_config, "training")
    torch.manual_seed(job_config.debug.seed or 0)
    model, _ = build_model(job_config, device="cuda" if torch.cuda.is_available() else "cpu")
    if checkpoint_path:
        load_model_state(model, checkpoint_path)
    converter = AdaHOPConverter(job_config, None)
    converter.convert(model)
    if converter.converted:  # (nothing converted: capture_operands says what the config lacks)
        wire(converter, [model])  # the config's modes (uniform, or its plan_file's plan)
    model.train()
    return capture_operands(model, training_steps(model, job_config), steps, max_tokens)
