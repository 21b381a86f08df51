"""The trainer side of the AdaHOP converter: its layers wired to calibration, the quantization-error metric and
the distributed group.

torchtitan's converters swap modules in ``convert`` and keep per-step upkeep in ``post_optimizer_hook``
(upstream's float8 and MX converters). ``AdaHOPConverter.convert`` does that, and everything that needs the
trainer lives here: ``wire(converter, model_parts, trainer)`` builds the Calibrator (uniform modes, a
``plan_file``'s plan, or calibration), the QuantErrorProbe, the per-layer observers feeding them, and the rank,
group and device the calibration votes are reduced over. ``adahop.train.AdaHOPTrainer`` wires its converters
once the model parts are parallelized; a converter that no trainer wired (torchtitan's own Trainer) wires itself
at its first ``post_optimizer_hook`` (its first step is then not observed). Tools that use the converted model
outside training (eval, sweep capture, profiling) wire it right after ``convert``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from adahop.calibration import Calibrator, PlanState, plan_settings
from adahop.config import resolved_table

if TYPE_CHECKING:
    from adahop.converter import AdaHOPConverter


class PlanWiring:
    """A converted model's Calibrator and QuantErrorProbe, the observers feeding them, and their step upkeep."""

    def __init__(self, converter: AdaHOPConverter, model_parts: list[nn.Module], trainer=None):
        from torchtitan.tools.logging import logger

        mx, job = converter.mx, converter.job_config
        self.trainer = trainer
        self.hook_calls = 0
        cal = mx.calibration
        # built on every converted layer (a plan_file must name them all), then kept to this rank's model parts
        self.calibrator = Calibrator(
            converter.layers,
            table=resolved_table(mx),
            uniform_mode=converter.uniform_mode,
            calibrate=bool(cal.use_HT_calibration),
            steps=int(cal.calibration_steps),
            threshold=cal.pattern_threshold,
            max_rows=int(cal.max_observed_rows),
            visualize=bool(cal.visualize_outlier_patterns),
            visualization_folder=cal.visualization_save_folder,
            visualization_max_pixels=int(cal.visualization_max_pixels),
            plan_file=cal.plan_file,
            settings=plan_settings(mx),
        )
        self.qerr = None
        if int(mx.quant_error_freq) > 0:
            from adahop.metrics import QuantErrorProbe

            self.qerr = QuantErrorProbe(
                converter.layers,
                freq=int(mx.quant_error_freq),
                tokens=int(mx.quant_error_tokens),
                layer_kwargs=converter.layer_kwargs,
            )
            if len(self.qerr.layers) < len(converter.layers):
                logger.info(
                    f"[adahop] quant_error_freq: {len(converter.layers) - len(self.qerr.layers)} MoE expert stacks "
                    "are not measured (linears only)"
                )
        self.calibrator.restrict_to(model_parts)  # pipeline stages hold some of the layers
        self.layers = dict(self.calibrator.layers)
        if self.qerr is not None:
            self.qerr.restrict_to(self.layers)
        self.calibrator.dump_folder = job.job.dump_folder
        self.calibrator.rank, self.calibrator.process_group, self.calibrator.reduce_device = reduction_group(
            converter.parallel_dims
        )
        self.install_observers()

    def current_step(self) -> int:
        """The trainer's step; without a trainer, the number of post_optimizer_hook calls so far."""
        return int(self.trainer.step) if self.trainer is not None else self.hook_calls

    def end_step(self) -> None:
        """After each optimizer step (the converter's post_optimizer_hook): close a calibration step, fix and write
        the plan after the last one, log the quantization error of a probe step."""
        self.hook_calls += 1
        step = self.current_step()
        cal = self.calibrator
        if cal.calibrating and cal.end_step():
            cal.publish()
            self.install_observers()
        if self.qerr is not None:
            metrics = self.qerr.end_step(step)
            mp = getattr(self.trainer, "metrics_processor", None)
            if metrics and getattr(mp, "logger", None) is not None:
                mp.logger.log(metrics, step)

    def state(self) -> PlanState:
        """The Stateful to register in the checkpoint (key "adahop")."""
        return PlanState(self.calibrator, on_load=self.install_observers)

    def install_observers(self) -> None:
        """An observer on each layer while calibration or the probe needs the operands; none otherwise."""
        need = self.calibrator.calibrating or self.qerr is not None
        for i, (fqn, layer) in enumerate(self.layers.items()):
            layer.observer = _Observer(self, i, fqn, layer) if need else None


def reduction_group(parallel_dims) -> tuple[int, object, torch.device]:
    """(rank, process group, device) the calibration votes are all-reduced over: every rank agrees on the plan
    (default group), except pipeline stages, which hold different layers and agree within their data-parallel
    group ("local": no reduction without one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 0, None, torch.device("cpu")
    group = None
    if parallel_dims is not None and getattr(parallel_dims, "pp_enabled", False):
        group = parallel_dims.get_mesh("batch").get_group() if parallel_dims.dp_enabled else "local"
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return dist.get_rank(), group, device


def wire(converter: AdaHOPConverter, model_parts: list[nn.Module], trainer=None) -> PlanWiring:
    """Wire `converter`'s converted layers (see the module docstring); returns converter.wiring."""
    if not converter.converted:
        raise RuntimeError(
            "adahop.plan_wiring.wire: the converter has converted nothing (convert(model) not called yet, or "
            "quantize.linear.mx.enable_mxfp4_linear / _gmm / _fa all false)"
        )
    converter.wiring = PlanWiring(converter, list(model_parts), trainer)
    return converter.wiring


class _Observer:
    """Per-layer observer: feeds calibration (while calibrating) and the quant-error probe."""

    __slots__ = ("wiring", "i", "fqn", "layer")

    def __init__(self, wiring: PlanWiring, i: int, fqn: str, layer: nn.Module):
        self.wiring, self.i, self.fqn, self.layer = wiring, i, fqn, layer

    def __call__(self, name: str, t: torch.Tensor) -> None:
        if not self.layer.training:
            return
        if name != "g" and not torch.is_grad_enabled():
            return
        wiring = self.wiring
        cal = wiring.calibrator
        if cal.calibrating:
            cal.observe(self.i, name, t)
        if wiring.qerr is not None:
            # the step being run: the trainer's step counter already counts it, the hook count does not yet
            wiring.qerr.observe(self.fqn, name, t, wiring.current_step() + (0 if wiring.trainer else 1))
