"""After the last (eager) calibration step the trainer logs that step's peak memory, returns the allocator's
cached blocks and restarts the logged peak, so that the memory logged for the compiled steps is their own."""

import types

import torch

import adahop.train as train_mod
from adahop.train import AdaHOPTrainer


class _Calibrator:
    def __init__(self, steps_left: int):
        self.steps_left = steps_left

    @property
    def calibrating(self) -> bool:
        return self.steps_left > 0


def _trainer(calibrator, monitor):
    trainer = object.__new__(AdaHOPTrainer)  # no torchtitan setup: only the step bookkeeping runs
    conv = types.SimpleNamespace(calibrator=calibrator, qerr=None, mx=None)
    trainer.adahop_converters = [conv]
    trainer.device = None  # no deferred check
    trainer.metrics_processor = types.SimpleNamespace(device_memory_monitor=monitor)
    return trainer


def test_cache_released_once_after_the_last_calibration_step(monkeypatch):
    events = []
    monitor = types.SimpleNamespace(reset_peak_stats=lambda: events.append("reset"))
    calibrator = _Calibrator(steps_left=2)

    def step(self, data_iterator):  # torchtitan's step: one calibration step done
        calibrator.steps_left -= 1
        events.append("step")

    monkeypatch.setattr(train_mod.titan_train.Trainer, "train_step", step)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty_cache"))
    logged = []
    monkeypatch.setattr(train_mod.logger, "info", lambda msg: logged.append(msg))
    trainer = _trainer(calibrator, monitor)
    for _ in range(4):
        trainer.train_step(iter(()))
    assert events == ["step", "step", "empty_cache", "reset", "step", "step"]
    assert logged == ["[adahop] calibration steps (eager) peaked at 3.00 GiB reserved; cached blocks released"]


def test_nothing_released_without_a_gpu(monkeypatch):
    events = []
    monitor = types.SimpleNamespace(reset_peak_stats=lambda: events.append("reset"))
    calibrator = _Calibrator(steps_left=1)
    monkeypatch.setattr(
        train_mod.titan_train.Trainer, "train_step", lambda self, it: setattr(calibrator, "steps_left", 0)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _trainer(calibrator, monitor).train_step(iter(()))
    assert events == []
