"""torchtitan MoE experts with their three grouped GEMMs in MXFP4 AdaHOP (enable_mxfp4_gmm).

Subclasses torchtitan's GroupedExperts: the parameters (w1, w2, w3 stacks) and their FQNs stay
exactly as upstream, so checkpoints and FSDP sharding are unchanged. Each stack gets an
MXFP4GroupedMM child holding its recipe (modes per slot) and calibration observer; calibration treats
the three like linears. Supported with expert parallel degree 1 (the local weights are the whole stack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torchtitan.models.moe.moe import GroupedExperts

from .grouped import MXFP4GroupedMM
from .linear import LinearRecipe

EXPERT_WEIGHTS = ("w1", "w2", "w3")


def _local(w: torch.Tensor) -> torch.Tensor:
    return w.to_local() if isinstance(w, DTensor) else w


class AdaHOPGroupedExperts(GroupedExperts):
    """GroupedExperts computing silu(x W1^T) * (x W3^T) @ W2^T per expert group in MXFP4."""

    mx_w1: MXFP4GroupedMM
    mx_w2: MXFP4GroupedMM
    mx_w3: MXFP4GroupedMM

    @classmethod
    def from_experts(cls, experts: GroupedExperts, recipes: dict[str, LinearRecipe]) -> "AdaHOPGroupedExperts":
        """Turn `experts` into this class in place (same object, same parameters), one recipe per stack."""
        dims = {name: tuple(getattr(experts, name).shape) for name in EXPERT_WEIGHTS}
        for name, shape in dims.items():
            if shape[1] % 32 or shape[2] % 32:
                raise ValueError(f"expert stack {name} has shape {shape}: MXFP4 needs both matrix dims multiples of 32")
        experts.__class__ = cls
        for name in EXPERT_WEIGHTS:
            experts.add_module(f"mx_{name}", MXFP4GroupedMM(recipes[name]))
        return experts

    def grouped_layers(self) -> dict[str, MXFP4GroupedMM]:
        return {name: getattr(self, f"mx_{name}") for name in EXPERT_WEIGHTS}

    def forward(self, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        w1, w2, w3 = (_local(getattr(self, name)) for name in EXPERT_WEIGHTS)
        if w1.shape[0] != num_tokens_per_expert.shape[0]:
            raise NotImplementedError(
                "enable_mxfp4_gmm supports expert parallel degree 1 only "
                f"({w1.shape[0]} local experts, {num_tokens_per_expert.shape[0]} token groups)"
            )
        h = F.silu(self.mx_w1(x, w1, num_tokens_per_expert)) * self.mx_w3(x, w3, num_tokens_per_expert)
        return self.mx_w2(h, w2, num_tokens_per_expert)
