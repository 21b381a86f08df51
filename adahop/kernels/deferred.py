"""Deficient-block check without a host sync per GEMM, for training steps.

The fp8 GEMM path is exact except for "deficient" blocks (an MXFP4 block more than 14 exponents below its
128-group's largest, which fp8 e4m3 cannot hold; adahop.kernels.quantize counts them). Outside this
context each GEMM reads its operands' counts on the host and corrects such blocks before returning: one
device-to-host sync per GEMM, which keeps the host from running ahead of the GPU.

Inside ``deferred_check(device)`` the quantize kernels add their counts to one device counter instead,
the GEMMs run without looking, and ``raise_if_deficient()`` reads the counter once (after a forward +
backward) and raises ``DeficientBlocksInStep`` if any block was dropped. The training loop
(adahop.train.AdaHOPTrainer) then discards that step's gradients and runs the step again on the exact
per-GEMM path, before the optimizer has seen anything: results are exactly those of the synchronous
path, and the count is kept (adahop.kernels.gemm.stats()) rather than lost. Blocks that neither the wide fp8
form nor the GEMM's row recomputation holds are rare (1-2 redone steps in 3100-step runs of the 100M model,
1-2 in 300-step runs of the 1B, docs/benchmarks.md), so the rerun is rare.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from .state import active


class DeficientBlocksInStep(RuntimeError):
    """Some GEMM of this step ran without its deficient blocks: the step must be redone exactly."""

    def __init__(self, count: int):
        self.count = count
        # the count adds blocks and, from the GEMMs that recompute rows, flagged rows beyond their row slots
        super().__init__(
            f"{count} MXFP4 block(s) (or rows beyond a GEMM's row slots) of this step could not be "
            "held in fp8 and were left out"
        )


@contextmanager
def deferred_check(device: torch.device | str) -> Iterator[torch.Tensor]:
    """Collect the deficient-block counts of every quantization on `device` into one counter."""
    state = active()
    previous = state.step_counter
    state.step_counter = counter = torch.zeros(1, dtype=torch.int32, device=device)
    try:
        yield counter
    finally:
        state.step_counter = previous


def counter_for(device: torch.device) -> Optional[torch.Tensor]:
    """The step's counter if a deferred check is active on `device`, else None (count per operand)."""
    c = active().step_counter
    return c if c is not None and c.device == device else None


def deferred() -> bool:
    return active().step_counter is not None


def raise_if_deficient(group=None) -> None:
    """Read the counter (one sync; agreed over the ranks, so every rank redoes the same steps) and raise
    DeficientBlocksInStep if any block was left out. A no-op outside ``deferred_check``."""
    c = active().step_counter
    if c is None:
        return
    total = c.clone()
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group)
    n = int(total.item())
    if n:
        active().stats["redone_steps"] += 1  # the blocks are counted by the exact path that redoes the step
        raise DeficientBlocksInStep(n)


def simulate_dropped_blocks(n: int = 1) -> None:
    """Test hook: count `n` blocks as left out in the active deferred check (no-op outside one)."""
    c = active().step_counter
    if c is not None:
        c.add_(n)
