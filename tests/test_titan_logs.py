"""adahop.titan.logs: torchtitan's messages that alarm without helping are shown at DEBUG (on CPU), Python
warnings of that kind are ignored, and the step line gets steps/s, the time left and n/a for tflops / mfu
where the peak FLOPS are unknown. (A whole CPU run's log: tests/test_first_hour.py.)"""

from __future__ import annotations

import logging
import types
import warnings

import pytest

import adahop.titan  # noqa: F401  (setup(): the filters are installed)
from adahop.titan import logs
from adahop.titan.cpu import has_accelerator


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)  # as torchtitan's init_logger
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def titan_log():
    handler = _Records()
    level = logs.titan_logger.level
    logs.titan_logger.setLevel(logging.INFO)
    logs.titan_logger.addHandler(handler)
    yield handler.lines
    logs.titan_logger.removeHandler(handler)
    logs.titan_logger.setLevel(level)


@pytest.mark.skipif(has_accelerator(), reason="the CPU messages are kept where there is an accelerator")
def test_cpu_messages_that_alarm_are_not_shown(titan_log):
    log = logs.titan_logger
    log.warning("Error running lspci: [Errno 2] No such file or directory: 'lspci', fallback to use device_name")
    log.warning("Peak flops undefined for: CPU (x86_64), fallback to A100")
    log.info("Peak FLOPS used for computing MFU: 3.120e+14")
    log.warning("ENV[TORCH_NCCL_ASYNC_ERROR_HANDLING] = 1 will be overridden to 3 based on job config")
    log.warning("model.safetensors.index.json not found at hf_assets_path: x/model.safetensors.index.json.")
    log.warning("Warmup steps (10) exceed total steps (6). Adjusting warmup steps to 6.")
    assert titan_log == [("WARNING", "Warmup steps (10) exceed total steps (6). Adjusting warmup steps to 6.")]


def test_quieted_messages_still_show_at_debug(titan_log):
    logs.titan_logger.setLevel(logging.DEBUG)
    shown = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: shown.append((record.levelname, record.getMessage()))
    logs.titan_logger.addHandler(handler)
    try:
        logs.titan_logger.warning("model.safetensors.index.json not found at hf_assets_path: x")
    finally:
        logs.titan_logger.removeHandler(handler)
    assert shown == [("DEBUG", "model.safetensors.index.json not found at hf_assets_path: x")]
    assert titan_log == []  # the INFO handler does not show it


def test_library_warnings_that_alarm_are_ignored():
    logs.quiet_messages()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("'set_vital' is deprecated, please do not call", UserWarning, stacklevel=2)
        if not has_accelerator():
            warnings.warn(
                "In CPU autocast, but the target dtype is not supported. Disabling autocast.", UserWarning, stacklevel=2
            )
        warnings.warn("something else", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something else"]


def test_format_duration():
    assert [logs.format_duration(s) for s in (0, 4.4, 59.6, 125, 3720, float("nan"))] == [
        "0s",
        "4s",
        "1m00s",
        "2m05s",
        "1h02m",
        "?",
    ]


def _processor(steps: int, peak_known: bool, reset: str = "\x1b[39m"):
    p = logs.AdaHOPMetricsProcessor.__new__(logs.AdaHOPMetricsProcessor)  # no metric loggers, no device
    p.job_config = types.SimpleNamespace(training=types.SimpleNamespace(steps=steps))
    p.peak_flops_known = peak_known
    p.color = types.SimpleNamespace(reset=reset)
    p._last_log = (0, 100.0)
    return p


def test_step_line_gets_rate_and_time_left():
    p = _processor(steps=150, peak_known=True)
    assert p.step_rate_suffix(10, now=104.0) == "  steps/s: 2.50  left: 56s"
    p._last_log = (10, 104.0)
    assert p.step_rate_suffix(20, now=124.0) == "  steps/s: 0.50  left: 4m20s"


def test_step_line_rewrite(titan_log):
    line = "\x1b[31mstep:  2  loss:  9.5  tps: 671  \x1b[36mtflops: 0.02  \x1b[35mmfu: nan%\x1b[39m"
    with logs._filter(logs.titan_logger, logs._AppendToStepLine("  steps/s: 1.00  left: 3s", "\x1b[39m", False)):
        logs.titan_logger.info(line)
    assert titan_log[-1][1] == (
        "\x1b[31mstep:  2  loss:  9.5  tps: 671  \x1b[36mtflops: n/a  \x1b[35mmfu: n/a  steps/s: 1.00  left: 3s\x1b[39m"
    )
    with logs._filter(logs.titan_logger, logs._AppendToStepLine("  steps/s: 1.00  left: 3s", "", True)):
        logs.titan_logger.info("step:  2  tflops: 312.50  mfu: 41.20%")
    assert titan_log[-1][1] == "step:  2  tflops: 312.50  mfu: 41.20%  steps/s: 1.00  left: 3s"
    logs.titan_logger.info("other line")  # the rewrite is gone after the step line
    assert titan_log[-1][1] == "other line"


def test_our_train_specs_use_the_metrics_processor():
    from torchtitan.protocols.train_spec import get_train_spec

    from adahop.models import MOE_TRAIN_SPEC_NAME, TRAIN_SPEC_NAME

    for name in (TRAIN_SPEC_NAME, MOE_TRAIN_SPEC_NAME):
        assert get_train_spec(name).build_metrics_processor_fn is logs.build_metrics_processor
