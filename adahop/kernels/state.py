"""What the GPU fast path keeps between calls, in one object.

The fp8 GEMMs' counters and diagnostics, the row slots of the input-gradient GEMMs (grown after a redone step),
the step's deferred exactness counter, the quantizers' launch choices and whether the torch reference is forced
all live in a FastPathState. The converter owns one per training job (AdaHOPConverter.fast_path) and makes it the
active state when it converts the model; until a converter has, the default state is active. A process that
converts several models (eval after training, offline sweeps) runs them all under the last converter's state.
The custom ops cannot take a Python object as an argument, so the kernels read the active state through
`active()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

# Launch choices of the quantize kernels: (rows per program, warps), and the butterfly formulation of the
# Hadamard (0: permute/split/join, 2: multiply-add with the partner from an integer bit sum; same bits). Where K
# is contiguous the multiply-add form builds to the fewest SASS instructions per element on sm_90
# (tests/kernels/compile_sm90.py); where the tile is transposed in the chip the permute/split/join form does.
# "strided_kernel": "t" computes transposed inputs in their loaded layout (_quantize_kernel_t), "trans"
# transposes the float tile first (_quantize_kernel with K_CONTIG=False; also the tile-scale path), "auto"
# takes "trans" with a Hadamard (faster on the H100: its butterflies along axis 0 compile badly in "t") and
# "t" without one. 128x128 tiles transposed in the chip (W^T) run at 32 warps: at 8 their sm_90 build spills
# registers. scripts/bench_linear.py --tune times alternatives by changing a state's `tuning`.
DEFAULT_TUNING = {
    "contig": (32, 8),
    "strided": (16, 4),
    "tile": (128, 8),
    "tile_strided": (128, 32),
    "hv_contig": 2,
    "hv_strided": 0,
    "reencode": (32, 4),
    "strided_kernel": "auto",
    "strided_t": (32, 4),
}

STAT_KEYS = ("gemms", "blocks", "deficient_blocks", "corrected_gemms", "fallback_gemms", "redone_steps")


@dataclass
class FastPathState:
    # running totals of what the fp8 path saw (host ints, updated where a count is read anyway)
    stats: dict = field(default_factory=lambda: dict.fromkeys(STAT_KEYS, 0))
    # where deficient blocks were found, by "<slot>:<side>" (adahop.kernels.gemm._record), while `record_deficient`
    deficient_by_tag: dict = field(default_factory=dict)
    record_deficient: bool = False
    # of the rows, given to every row-fixing GEMM as slots on top of the default (grown by gemm.grow_row_slots)
    row_slots_fraction: float = 0.0
    rows_fixed: dict = field(default_factory=dict)  # device -> int64 [1]: rows recomputed, summed on the device
    # device -> int64 [1]: the largest flagged-row fraction of a GEMM whose flagged rows did not fit its slots
    overflow_ratio: dict = field(default_factory=dict)
    # int32 [1] on the step's device while a deferred check is open (adahop.kernels.deferred)
    step_counter: Optional[torch.Tensor] = None
    tuning: dict = field(default_factory=lambda: dict(DEFAULT_TUNING))
    # the torch reference on every device ([quantize.linear.mx.kernels] reference_only; for debugging kernels)
    force_reference: bool = False

    def reset_stats(self) -> None:
        """Zero the counters and diagnostics (not the row slots, nor the launch choices)."""
        self.stats.update(dict.fromkeys(STAT_KEYS, 0))
        self.deficient_by_tag.clear()
        self.rows_fixed.clear()


_ACTIVE = [FastPathState()]


def active() -> FastPathState:
    """The state the kernels read and update now."""
    return _ACTIVE[0]


def activate(state: FastPathState) -> FastPathState:
    """Make `state` the active one; returns the one it replaces."""
    previous, _ACTIVE[0] = _ACTIVE[0], state
    return previous
