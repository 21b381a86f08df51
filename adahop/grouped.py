"""MXFP4 AdaHOP grouped GEMM for MoE experts: y_e = x_e @ W_e^T for each expert's token group.

Each expert's group runs the same three-slot autograd Function as a Linear (adahop.linear), so every
mode, stochastic rounding and the packed saving for backward carry over unchanged. Groups are ragged:
a group's token count is K of its weight-gradient GEMM, padded there with zero rows to whole blocks
(exact: zero rows add nothing); an empty group contributes nothing and gets a zero weight gradient.
Rows past the last group (the alignment padding torchtitan's token reorderer adds) come out zero.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from .linear import AdaHOPModes, LinearRecipe, _apply


def mxfp4_grouped_mm(
    x: torch.Tensor, weight: torch.Tensor, num_tokens_per_group: torch.Tensor | list[int], recipe: LinearRecipe
) -> torch.Tensor:
    """x [T, in] (tokens sorted by group), weight [G, out, in] -> [T, out] under `recipe`'s modes."""
    if x.dim() != 2 or weight.dim() != 3 or x.shape[1] != weight.shape[2]:
        raise ValueError(f"expected x [T, in] and weight [G, out, in], got {tuple(x.shape)} and {tuple(weight.shape)}")
    counts = num_tokens_per_group.tolist() if torch.is_tensor(num_tokens_per_group) else list(num_tokens_per_group)
    if len(counts) != weight.shape[0]:
        raise ValueError(f"{len(counts)} group sizes given for {weight.shape[0]} weight groups")
    if any(c < 0 for c in counts) or sum(counts) > x.shape[0]:
        raise ValueError(f"group sizes {counts} must be >= 0 and sum to at most the {x.shape[0]} rows of x")
    outs = []
    start = 0
    for g, count in enumerate(counts):
        outs.append(_apply(x[start : start + count], weight[g], recipe))
        start += count
    if start < x.shape[0]:
        # padding rows of the router's layout, in the groups' output dtype (autocast may have changed it)
        dtype = outs[0].dtype if outs else x.dtype
        outs.append(x.new_zeros(x.shape[0] - start, weight.shape[1], dtype=dtype))
    return torch.cat(outs, dim=0)


class MXFP4GroupedMM(AdaHOPModes, nn.Module):
    """The AdaHOP state of one grouped weight (e.g. an expert stack w1): recipe, modes, observer.

    Holds no parameters: the weight stays on the experts module, so its FQN and FSDP sharding do not
    change. Calibration treats it like an AdaHOPLinear: x is the routed tokens of all groups, W the
    whole stack flattened to [G * out, in], g the gradient of the routed outputs.
    """

    def __init__(self, recipe: LinearRecipe):
        super().__init__()
        self.recipe = recipe
        self.observer: Optional[Callable[[str, torch.Tensor], None]] = None

    def forward(self, x: torch.Tensor, weight: torch.Tensor, num_tokens_per_group) -> torch.Tensor:
        if self.observer is not None:
            self.observer("x", x.detach())
            self.observer("w", weight.detach().reshape(-1, weight.shape[-1]))
        y = mxfp4_grouped_mm(x, weight, num_tokens_per_group, self.recipe)
        if self.observer is not None and y.requires_grad:
            observer = self.observer

            def observe_grad(g: torch.Tensor) -> None:
                observer("g", g.detach())

            y.register_hook(observe_grad)
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.modes.items())
