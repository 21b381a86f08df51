"""``python -m debug_train`` (tests/ on the path): adahop.train with hooks that only tests use, so that the
production trainer reads no debugging switches. Not a test module.

    ADAHOP_DEBUG_DEFICIENT_AT_STEP="N[,N:rows,...]"  at step N, count a block as left out of the fp8 form (the
        step is redone exactly), or with ":rows" a GEMM overflowing its row slots; such steps are deferred on
        any device, as they are on the GPU fast path
    ADAHOP_DEBUG_KILL_AT_STEP=N  SIGKILL this rank right after the optimizer step of step N
    ADAHOP_DEBUG_COUNT_COLLECTIVES=1  defer the exactness check on CPU in the steps where the GPU fast path
        defers it (not while a converter observes), and log per step "[adahop-debug] step N: microbatches M,
        exactness all_reduce K, plan collectives C, calibrating 0|1": the torch.distributed all-reduces made by
        adahop.kernels.deferred.raise_if_deficient and the collectives made from adahop/calibration.py
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections import Counter

import torch

from adahop.train import AdaHOPTrainer, exit_process, main  # noqa: F401  (adahop.train sets up torchtitan first)

# isort: split
from torchtitan.tools.logging import logger

from adahop import calibration
from adahop.kernels import deferred

DEFICIENT_EVENTS = [e for e in os.environ.get("ADAHOP_DEBUG_DEFICIENT_AT_STEP", "").split(",") if e]
KILL_AT = os.environ.get("ADAHOP_DEBUG_KILL_AT_STEP")
COUNT_COLLECTIVES = os.environ.get("ADAHOP_DEBUG_COUNT_COLLECTIVES") == "1"

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "barrier",
)
CALLS: Counter = Counter()  # this step's counts (COUNT_COLLECTIVES)


def _counted(name, fn):
    """`fn` counting its calls by caller: the code that calls torch.distributed.<name> is the frame above."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        code = sys._getframe(1).f_code
        if code.co_filename == deferred.__file__ and code.co_name == "raise_if_deficient" and name == "all_reduce":
            CALLS["exactness"] += 1
        elif code.co_filename == calibration.__file__:
            CALLS["plan"] += 1
        return fn(*args, **kwargs)

    return wrapper


if COUNT_COLLECTIVES:
    # the library calls torch.distributed.<name> at call time (dist = torch.distributed), so the module
    # attributes are what it reaches; a name bound at import would not be counted, and the test, which
    # expects calls, would fail rather than pass
    for _name in COLLECTIVES:
        setattr(torch.distributed, _name, _counted(_name, getattr(torch.distributed, _name)))


class DebugTrainer(AdaHOPTrainer):
    def _deferred_check_device(self):
        device = super()._deferred_check_device()
        if device is None and DEFICIENT_EVENTS and self.step > self._sync_until_step:
            return self.device  # the CPU stand-in of the GPU path's deferred check
        if (
            device is None
            and COUNT_COLLECTIVES
            and self.adahop_converters
            and self.step > self._sync_until_step
            and not any(c.mx.kernels.exactness_check == "per_gemm" or self._observes(c) for c in self.adahop_converters)
        ):
            return self.device  # the steps where the GPU fast path defers its check
        return device

    def forward_backward_step(self, **kwargs):
        CALLS["microbatches"] += 1
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
        CALLS.clear()
        calibrating = any(c.calibrator.calibrating for c in self.adahop_converters)
        super().train_step(data_iterator)
        if COUNT_COLLECTIVES:
            logger.info(
                f"[adahop-debug] step {self.step}: microbatches {CALLS['microbatches']}, exactness "
                f"all_reduce {CALLS['exactness']}, plan collectives {CALLS['plan']}, "
                f"calibrating {int(calibrating)}"
            )
        if KILL_AT and self.step == int(KILL_AT):
            logger.warning(f"[adahop] ADAHOP_DEBUG_KILL_AT_STEP={KILL_AT}: killing rank now")
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    exit_process(main(trainer=DebugTrainer))
