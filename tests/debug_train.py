"""``python -m debug_train`` (tests/ on the path): adahop.train with hooks that only tests use, so that the
production trainer reads no debugging switches. Not a test module.

    ADAHOP_DEBUG_DEFICIENT_AT_STEP="N[,N:rows,...]"  at step N, count a block as left out of the fp8 form (the
        step is redone exactly), or with ":rows" a GEMM overflowing its row slots; such steps are deferred on
        any device, as they are on the GPU fast path
    ADAHOP_DEBUG_KILL_AT_STEP=N  SIGKILL this rank right after the optimizer step of step N
"""

from __future__ import annotations

import os
import signal
import sys

from adahop.train import AdaHOPTrainer, main  # noqa: F401  (adahop.train sets up torchtitan first)
from adahop.kernels import deferred
from torchtitan.tools.logging import logger

DEFICIENT_EVENTS = [e for e in os.environ.get("ADAHOP_DEBUG_DEFICIENT_AT_STEP", "").split(",") if e]
KILL_AT = os.environ.get("ADAHOP_DEBUG_KILL_AT_STEP")


class DebugTrainer(AdaHOPTrainer):
    def _deferred_check_device(self):
        device = super()._deferred_check_device()
        if device is None and DEFICIENT_EVENTS and self.step > self._sync_until_step:
            return self.device  # the CPU stand-in of the GPU path's deferred check
        return device

    def forward_backward_step(self, **kwargs):
        loss = super().forward_backward_step(**kwargs)
        for event in DEFICIENT_EVENTS:
            step, _, kind = event.partition(":")
            if self.step == int(step):
                if kind == "rows":
                    from adahop.kernels.gemm import simulate_row_overflow

                    simulate_row_overflow(self.device, 0.01)
                else:
                    deferred.simulate_dropped_blocks(1)
        return loss

    def train_step(self, data_iterator):
        super().train_step(data_iterator)
        if KILL_AT and self.step == int(KILL_AT):
            logger.warning(f"[adahop] ADAHOP_DEBUG_KILL_AT_STEP={KILL_AT}: killing rank now")
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(trainer=DebugTrainer))
