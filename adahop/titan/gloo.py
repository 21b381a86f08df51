"""Make FSDP2 work over gloo (CPU data parallel).

torchtitan calls ``set_gradient_divide_factor(1.0)`` on every FSDP module, which makes the gradient
reduce-scatter use ``ReduceOp.PREMUL_SUM``; gloo has no PREMUL_SUM ("Cannot use ReduceOp.PREMUL_SUM
with Gloo"). With a divide factor of 1 a plain SUM is the same reduction, so on gloo we ask FSDP to
use SUM (``FSDPModule.set_force_sum_reduction_for_comms(True)``).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def backend_is_gloo() -> bool:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        return "gloo" in str(dist.get_backend()).lower() and "nccl" not in str(dist.get_backend()).lower()
    except Exception:  # pragma: no cover
        return False


def force_sum_reduction_on_gloo(model: nn.Module | list[nn.Module]) -> int:
    """Call set_force_sum_reduction_for_comms(True) on every FSDP module when the backend is gloo.

    Returns the number of FSDP modules changed (0 when not on gloo).
    """
    if not backend_is_gloo():
        return 0
    from torch.distributed.fsdp import FSDPModule

    parts = model if isinstance(model, (list, tuple)) else [model]
    n = 0
    for part in parts:
        for m in part.modules():
            if isinstance(m, FSDPModule):
                m.set_force_sum_reduction_for_comms(True)
                n += 1
    return n
