"""AdaHOP layers under torch.autocast (torchtitan's mixed precision on one device, without FSDP).

Autocast casts the inputs of the ops it knows (F.linear, SDPA) to its dtype; our custom ops are not
among them, so they would receive float32 parameters and float32 activations (RMSNorm runs in float32
under autocast) and hand float32 outputs downstream: twice the memory of every saved BF16 operand, float32
copies in every full-precision GEMM. ``autocast_inputs`` casts like autocast would, and the op then
runs with autocast off, so its reference path keeps its float32 arithmetic.
"""

from __future__ import annotations

import contextlib

import torch


def autocast_inputs(*tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], contextlib.AbstractContextManager]:
    """(tensors cast to the active autocast dtype, a context that switches autocast off) -- or the tensors
    unchanged and a no-op context when autocast is off for their device."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors, contextlib.nullcontext()
    dtype = torch.get_autocast_dtype(device_type)
    cast = tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)
    return cast, torch.autocast(device_type, enabled=False)
