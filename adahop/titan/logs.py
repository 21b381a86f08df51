"""torchtitan's console log, made quieter and more useful through its extension points only.

* ``quiet_messages()``: Python logging / warnings filters for messages that alarm without helping:

  - everywhere: torchtitan's "model.safetensors.index.json not found" (it matters only for checkpoints saved
    in Hugging Face format, which our configs do not write; shown at DEBUG), torchdata's ``set_vital``
    deprecation (torchdata calls it, not us);
  - on CPU: "Error running lspci" and "Peak flops undefined ... fallback to A100" (a CPU has no peak FLOPS
    in torchtitan's table: mfu is shown as n/a instead of a share of an A100), the NCCL environment overrides
    (the CPU ranks talk over gloo), and torch's note that CPU autocast does not run float32 (our CPU configs
    train in float32 on purpose).

  Dropped messages are logged again at DEBUG, so ``logging.DEBUG`` still shows them.

* ``AdaHOPMetricsProcessor`` (each adahop train spec's ``build_metrics_processor_fn``): torchtitan's
  MetricsProcessor, whose step line also shows ``steps/s`` (since the previous log line) and the time left
  at that rate (``left``), and ``tflops: n/a  mfu: n/a`` where the device's peak FLOPS are unknown (CPU;
  TensorBoard / W&B still get the measured tflops).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import warnings

from torchtitan.components.metrics import MetricsProcessor
from torchtitan.tools.logging import logger as titan_logger

from .cpu import has_accelerator

#: torchtitan log messages shown at DEBUG instead (patterns searched from the start of the message)
QUIET_ALWAYS = (re.compile(r"model\.safetensors\.index\.json not found at hf_assets_path"),)
QUIET_ON_CPU = (
    re.compile(r"Error running lspci"),
    re.compile(r"Peak flops undefined for"),
    re.compile(r"Peak FLOPS used for computing MFU"),
    re.compile(r"ENV\[TORCH_NCCL_"),
)
#: Python warnings ignored (message patterns, matched from the start)
WARNINGS_ALWAYS = (r"'set_vital' is deprecated",)
WARNINGS_ON_CPU = (r"In CPU autocast, but the target dtype is not supported",)


class _Downgrade(logging.Filter):
    """Shows the matching records of the logger it is attached to at DEBUG instead of their level."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = tuple(patterns)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(p.match(str(record.msg)) for p in self.patterns):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return titan_logger.isEnabledFor(logging.DEBUG)
        return True


_QUIET: _Downgrade | None = None


def quiet_messages() -> None:
    """Install the filters above (idempotent)."""
    global _QUIET
    on_cpu = not has_accelerator()
    if _QUIET is None:
        _QUIET = _Downgrade(QUIET_ALWAYS + (QUIET_ON_CPU if on_cpu else ()))
        titan_logger.addFilter(_QUIET)  # torchtitan logs on this (root) logger itself: its filters apply
    for message in WARNINGS_ALWAYS + (WARNINGS_ON_CPU if on_cpu else ()):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def format_duration(seconds: float) -> str:
    """4s, 2m05s, 1h02m; '?' when not finite."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_TFLOPS = re.compile(r"tflops: [0-9.,]+")


class _AppendToStepLine(logging.Filter):
    """Rewrites the one step line torchtitan's MetricsProcessor.log emits: `suffix` before its color reset;
    without known peak FLOPS, tflops and mfu as n/a (a CPU's would read 0.00)."""

    def __init__(self, suffix: str, reset: str, peak_flops_known: bool):
        super().__init__()
        self.suffix, self.reset, self.peak_flops_known = suffix, reset, peak_flops_known

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if not self.peak_flops_known:
            msg = _TFLOPS.sub("tflops: n/a", msg.replace("mfu: nan%", "mfu: n/a"))
        if self.reset and msg.endswith(self.reset):
            msg = msg[: -len(self.reset)] + self.suffix + self.reset
        else:
            msg += self.suffix
        record.msg = msg
        return True


class AdaHOPMetricsProcessor(MetricsProcessor):
    """torchtitan's MetricsProcessor with steps/s, the time left and, without known peak FLOPS, tflops / mfu n/a."""

    def __init__(self, job_config, parallel_dims, tag: str | None = None):
        super().__init__(job_config, parallel_dims, tag)
        self.peak_flops_known = has_accelerator()
        if not self.peak_flops_known:
            # torchtitan would divide by an A100's peak: NaN keeps TensorBoard / W&B from showing a made-up share
            self.gpu_peak_flops = float("nan")
            titan_logger.info(
                "[adahop] the CPU has no peak FLOPS in torchtitan's table: tflops and mfu are shown as n/a"
            )
        self._last_log = (0, time.perf_counter())

    def step_rate_suffix(self, step: int, now: float) -> str:
        """'  steps/s: R  left: T' for a log line at `step`, from the steps and time since the previous one."""
        last_step, last_time = self._last_log
        elapsed = now - last_time
        rate = (step - last_step) / elapsed if elapsed > 0 and step > last_step else float("nan")
        left = (self.job_config.training.steps - step) / rate if rate > 0 else float("nan")
        return f"  steps/s: {rate:.2f}  left: {format_duration(left)}"

    def log(self, step: int, *args, **kwargs):
        suffix = self.step_rate_suffix(step, time.perf_counter())
        rewrite = _AppendToStepLine(suffix, self.color.reset, self.peak_flops_known)
        with _filter(titan_logger, rewrite):
            super().log(step, *args, **kwargs)
        self._last_log = (step, time.perf_counter())


@contextlib.contextmanager
def _filter(log: logging.Logger, f: logging.Filter):
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag: str | None = None) -> MetricsProcessor:
    """torchtitan's build_metrics_processor signature (TrainSpec.build_metrics_processor_fn)."""
    return AdaHOPMetricsProcessor(job_config, parallel_dims, tag)
