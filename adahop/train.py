"""Entry point: ``python -m adahop.train --job.config_file configs/<name>.toml [--section.key value ...]``.

This is upstream torchtitan 0.2.2's trainer (``torchtitan.train.main`` and ``Trainer``), extended only
through its extension points:

* ``adahop.titan.setup()`` -- CPU device stand-ins, our ``quantize.linear.mx`` converter, the
  "adahop_llama3" train spec, the embedded datasets (see adahop/titan/__init__.py);
* ``--job.custom_config_module adahop.config`` is added to the arguments unless given;
* ``AdaHOPTrainer`` (a subclass handed to ``torchtitan.train.main``) validates the adahop config before
  anything is built (also that a resumed checkpoint fits this run: model, step, plan settings,
  data-parallel degree, adahop.resume), wires each AdaHOP converter's calibration, quantization-error metric
  and reduction group once the model is parallelized (adahop.plan_wiring), and registers the AdaHOP plan into
  the checkpoint (key "adahop").

Without torchrun (plain ``python -m adahop.train``) a single-process environment is filled in
(RANK=0, WORLD_SIZE=1, a free MASTER_PORT).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import socket
import sys

from adahop.titan import setup

setup()  # before torchtitan.train is imported: CPU shims must precede torchtitan's device detection

import torch  # noqa: E402
import torchtitan.train as titan_train  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402
from torchtitan.tools.logging import logger  # noqa: E402

from adahop.cli import check_removed_switches, run_cli  # noqa: E402
from adahop.config import check_config_file, validate_job_config  # noqa: E402
from adahop.kernels import deferred  # noqa: E402
from adahop.plan_wiring import wire  # noqa: E402
from adahop.resume import check_resume  # noqa: E402

CUSTOM_CONFIG_MODULE = "adahop.config"
_CCM_FLAGS = ("--job.custom_config_module", "--job.custom-config-module")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_env() -> None:
    """Fill in the torch.distributed env:// variables when not launched by torchrun."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def with_custom_config_module(args: list[str]) -> list[str]:
    """Add ``--job.custom_config_module adahop.config`` unless the CLI names one already.

    (A custom_config_module given in the TOML is overridden by ours -- the CLI wins in torchtitan --
    unless it is adahop.config already; a different one must be given on the command line.)
    """
    for a in args:
        if a.split("=", 1)[0] in _CCM_FLAGS:
            return list(args)
    return list(args) + ["--job.custom_config_module", CUSTOM_CONFIG_MODULE]


def resolve_repo_paths(job_config) -> None:
    """A relative ``model.hf_assets_path`` that does not exist from the working directory is looked
    up from the repository root (adahop.data.tokenizer.tokenizer_folder)."""
    from adahop.data.tokenizer import tokenizer_folder

    job_config.model.hf_assets_path = tokenizer_folder(job_config.model.hf_assets_path)


def check_job(job_config, world_size: int) -> None:
    """Every check of a run's config and resumed checkpoint that needs no process group (raises ConfigError /
    CheckpointError): what AdaHOPTrainer runs first, and what `preflight` runs before a launcher starts ranks."""
    # a user module may register flavors/datasets: import it before validating (torchtitan imports it again in
    # Trainer.__init__, a no-op)
    if job_config.experimental.custom_import:
        importlib.import_module(job_config.experimental.custom_import)
    resolve_repo_paths(job_config)
    validate_job_config(job_config, check_model=True)
    check_resume(job_config, world_size)


def preflight(argv: list[str], world_size: int) -> None:
    """The checks of one run, from its command line (torchtitan arguments), in this process: run_train.sh calls it
    (`python -m adahop.train --preflight WORLD_SIZE ...`) before torchrun, so that bad input is one message, not
    one per rank under torchrun's failure report."""
    from adahop.config import _config_manager

    check_job(_config_manager().parse_args(checked_args(argv)), world_size)


def checked_args(argv: list[str]) -> list[str]:
    """The run's arguments with our config module added, after the checks that need no parsed config: removed
    environment switches, and the TOML file's keys and value types and the command line's keys (before torchtitan
    reads them: it takes TOML values without a type check)."""
    check_removed_switches()
    args = with_custom_config_module(argv)
    check_config_file(args)
    return args


def write_job_file(job_config) -> None:
    """<dump_folder>/adahop_job.json: the whole job config, so that eval / export / sweep tools can
    rebuild the model of a checkpoint without being told the TOML again (rank 0, atomic)."""
    import dataclasses
    import json

    if int(os.environ.get("RANK", "0")) != 0:
        return
    from adahop.files import write_text_atomic

    os.makedirs(job_config.job.dump_folder, exist_ok=True)
    path = os.path.join(job_config.job.dump_folder, "adahop_job.json")
    write_text_atomic(path, json.dumps(dataclasses.asdict(job_config), indent=2, default=str))


def validate_same_batches(validator) -> None:
    """Make every validation pass read the same batches: the first `validation.steps` of the set.

    Upstream's validation dataset resumes where the previous pass stopped, so losses logged at
    different steps are measured on different text. Restarting it (through the dataset's own
    state_dict / load_state_dict) makes them comparable, and equal to what adahop.eval reports.
    """
    loader = getattr(validator, "validation_dataloader", None)
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "state_dict"):
        return
    start = copy.deepcopy(dataset.state_dict())
    validate = validator.validate

    def validate_from_start(model_parts, step):
        dataset.load_state_dict(copy.deepcopy(start))
        return validate(model_parts, step)

    validator.validate = validate_from_start


# after a step had to be redone, that many steps run on the exact per-GEMM path before deferring again
# (a burst of redos would double the cost). Short, and skipped when the redo came from too few row slots
# (adahop.kernels.gemm.grow_row_slots gives more instead): the per-GEMM path costs about 2x per step, so a
# long backoff costs more than the redos it saves (docs/kernels.md).
REDO_BACKOFF_STEPS = 10


def _rng_state(device) -> tuple:
    dev = torch.device(device)
    return torch.get_rng_state(), (torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None)


def _set_rng_state(device, state: tuple) -> None:
    cpu, accel = state
    torch.set_rng_state(cpu)
    if accel is not None:
        torch.cuda.set_rng_state(accel, torch.device(device))


# Graphs torch.compile may keep per code object (a transformer block's forward) when the model is compiled:
# AdaHOP layers trace their recipe (modes per slot) as a constant, so a calibrated plan can give every block a
# graph of its own, and dynamo's default of 8 would send the blocks past it back to eager (or fail, under
# fullgraph). One per block of any model trained here.
BLOCK_GRAPHS = 256


def allow_block_recompiles(job_config) -> None:
    """Let a compiled model keep up to BLOCK_GRAPHS graphs per block code (see above)."""
    if not (job_config.compile.enable and "model" in job_config.compile.components):
        return
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, BLOCK_GRAPHS)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * BLOCK_GRAPHS)


@contextlib.contextmanager
def _checked_before_optimizer_step():
    """Inside: the first optimizer step reads the deferred deficient-block counter (one host sync and, with
    several ranks, one all-reduce per optimizer step, whatever the number of microbatches) and raises
    DeficientBlocksInStep before any parameter changes (adahop.kernels.deferred)."""
    checked = []

    def check(optimizer, args, kwargs):
        if not checked:
            checked.append(True)
            deferred.raise_if_deficient()

    handle = register_optimizer_step_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


class _RecordingIterator:
    """Passes batches through and keeps them, so that a step can be run again on the same data."""

    def __init__(self, it):
        self.it, self.taken = it, []

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.taken.append(item)
        return item


class AdaHOPTrainer(titan_train.Trainer):
    """torchtitan's Trainer with adahop config validation up front and the plan in the checkpoint."""

    def __init__(self, job_config):
        # every adahop check, before the distributed init, the model, the data or any step
        check_job(job_config, int(os.environ.get("WORLD_SIZE", "1")))
        from adahop.converter import active_converters

        before = set(map(id, active_converters()))
        allow_block_recompiles(job_config)
        super().__init__(job_config)
        write_job_file(job_config)
        validate_same_batches(getattr(self, "validator", None))
        self.adahop_converters = [c for c in active_converters() if id(c) not in before and c.converted]
        self._sync_until_step = 0  # see REDO_BACKOFF_STEPS
        for i, conv in enumerate(self.adahop_converters):
            # calibration, the quant-error metric and the reduction group: the trainer's side of the converter
            wiring = wire(conv, self.model_parts, trainer=self)
            key = "adahop" if i == 0 else f"adahop_{i}"
            self.checkpointer.states[key] = wiring.state()
            cal = conv.calibrator
            # torchtitan's CheckpointManager sets exclude_from_loading only when checkpointing is on
            # (else nothing loads)
            excluded = getattr(self.checkpointer, "exclude_from_loading", None)
            if cal.plan_file and excluded is not None and key not in excluded:
                # plan_file is how a resumed run changes its plan (adahop.resume): the checkpoint's is not loaded
                self.checkpointer.exclude_from_loading = [*excluded, key]
                logger.info(f"[adahop] plan_file {cal.plan_file}: a resumed checkpoint's plan is not loaded")
            if not cal.calibrating:
                cal.publish()  # uniform or plan_file: write the plan now (a checkpoint may replace a uniform one)

    def _deferred_check_device(self):
        """The device whose GEMMs may skip their per-GEMM sync this step (adahop.kernels.deferred), or
        None: only on the fp8 fast path, unless `[quantize.linear.mx.kernels] exactness_check = "per_gemm"`,
        and not while a converter observes the step's operands (calibration, a quant-error probe step),
        whose observations a redone step would repeat."""
        from adahop.backend import fast_device

        device = getattr(self, "device", None)
        if (
            device is None
            or not self.adahop_converters
            or not fast_device(torch.device(device))
            or self.step <= self._sync_until_step
        ):
            return None
        for conv in self.adahop_converters:
            if conv.mx.kernels.exactness_check == "per_gemm" or self._observes(conv):
                return None
        return device

    def _observes(self, conv) -> bool:
        """Whether `conv`'s observers need this step's operands (they run in eager steps only)."""
        return conv.calibrator.calibrating or (conv.qerr is not None and conv.qerr.due(self.step))

    def _eager_step(self):
        """A context for this step: compiled parts run eagerly (torch.compiler.set_stance) while an
        observer needs the operands (calibration, a quant-error probe step); otherwise nothing."""
        if any(self._observes(conv) for conv in self.adahop_converters):
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    def train_step(self, data_iterator):
        device = self._deferred_check_device()
        calibrating = any(conv.calibrator.calibrating for conv in self.adahop_converters)
        with self._eager_step():
            if device is None:
                super().train_step(data_iterator)
            else:
                self._train_step_deferred(data_iterator, device)
        if calibrating and not any(conv.calibrator.calibrating for conv in self.adahop_converters):
            self._release_calibration_memory()

    def _release_calibration_memory(self):
        """Calibration steps run eagerly and keep more activations than compiled steps do: after the last one,
        the allocator's cached blocks go back to the device and the logged peak restarts, so that the memory
        logged from here on is the training steps' own. The calibration peak is logged first: a job needs it."""
        if not torch.cuda.is_available():
            return
        peak = torch.cuda.max_memory_reserved() / 2**30
        torch.cuda.empty_cache()
        monitor = getattr(getattr(self, "metrics_processor", None), "device_memory_monitor", None)
        if monitor is not None:
            monitor.reset_peak_stats()
        logger.info(f"[adahop] calibration steps (eager) peaked at {peak:.2f} GiB reserved; cached blocks released")

    def _train_step_deferred(self, data_iterator, device):
        """One step with the per-GEMM deficient-block sync deferred to one check per optimizer step (after
        every microbatch's backward, before the optimizer); if a block was left out, the step is run again
        on the exact path from the same batches."""
        batches = _RecordingIterator(data_iterator)
        moe_counts = [
            (b, b.clone())
            for part in self.model_parts
            for name, b in part.named_buffers()
            if name.endswith("tokens_per_expert")
        ]
        rng = _rng_state(device)  # stochastic rounding draws: the redo must draw the same
        try:
            with deferred.deferred_check(device), _checked_before_optimizer_step():
                super().train_step(batches)
        except deferred.DeficientBlocksInStep as e:
            # every rank gets here together (the count is all-reduced), so the ranks stay in step
            from adahop.kernels.gemm import grow_row_slots

            grown = grow_row_slots(device)  # agreed over the ranks too
            if grown is None:
                self._sync_until_step = self.step + REDO_BACKOFF_STEPS
                then = f"keeping that path for the next {REDO_BACKOFF_STEPS} steps"
            else:  # the rows did not fit the GEMMs' slots: with more slots the next steps stay fast
                then = (
                    f"the input-gradient GEMMs recompute up to {100 * grown:.2f}% of their rows exactly from "
                    "now on (they had too few row slots)"
                )
            logger.warning(
                f"[adahop] step {self.step}: {e}; running the step again with the exact per-GEMM "
                f"correction (nothing of the first attempt reached the optimizer), and {then}"
            )
            for buf, saved in moe_counts:
                buf.copy_(saved)  # the MoE router's forward-accumulated load-balancing counts
            _set_rng_state(device, rng)
            super().train_step(iter(batches.taken))

    def train(self):
        for conv in self.adahop_converters:
            if conv.calibrator.calibrating:
                logger.info(
                    f"[adahop] calibration of outlier patterns over the first {conv.calibrator.steps} "
                    f"steps (unless a checkpoint restores a plan)"
                )
        report = self.job_config.quantize.linear.mx.kernels.deficient_report if self.adahop_converters else ""
        if not report:
            return super().train()
        from adahop.kernels import gemm

        gemm.record_deficient(True)
        try:
            result = super().train()
        except BaseException:
            # what was recorded still helps to find why training stopped; the report must not hide that error
            with contextlib.suppress(OSError):
                gemm.dump_deficient_report(f"{report}.{int(os.environ.get('RANK', '0'))}.json")
            raise
        finally:
            gemm.record_deficient(False)
        gemm.dump_deficient_report(f"{report}.{int(os.environ.get('RANK', '0'))}.json")
        return result


def _set_cli_args(args: list[str]) -> None:
    """torchtitan.train.main parses ``ConfigManager.parse_args()``'s default argument, the list
    ``sys.argv[1:]`` taken when torchtitan.config.manager was imported; refill that list in place.

    A patch of upstream state, needed because main(trainer_class) takes no arguments and builds its own
    ConfigManager, so there is no other way to hand it ours (docs/training.md, "Patches of upstream state")."""
    sys.argv = [sys.argv[0]] + list(args)
    from torchtitan.config.manager import ConfigManager

    defaults = ConfigManager.parse_args.__defaults__
    if defaults and isinstance(defaults[0], list):
        defaults[0][:] = list(args)


def _main(argv: list[str] | None, trainer: type = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--preflight"]:
        from adahop.cli import UsageError

        if len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) < 1:
            raise UsageError("--preflight takes the world size (a whole number >= 1) first, then the run's arguments")
        return preflight(argv[2:], int(argv[1]))
    args = checked_args(argv)
    ensure_single_process_env()
    _set_cli_args(args)
    titan_train.main(trainer or AdaHOPTrainer)


def main(argv: list[str] | None = None, trainer: type = None) -> int:
    """Exit code: 0, or 2 with one line on stderr for bad input (a ConfigError, ...: adahop.cli). `trainer`:
    an AdaHOPTrainer subclass to run instead (the tests' hooks: tests/debug_train.py)."""
    return run_cli(lambda a: _main(a, trainer), argv)


def exit_process(code: int) -> None:
    """End this training process with `code`. A rank of a multi-process CPU (gloo) run ends without interpreter
    finalization, after flushing its output: gloo's worker threads can still hold work objects whose tensors are
    destroyed while the interpreter shuts down, which aborts a rank that has finished ("terminate called without
    an active exception", SIGABRT, after "Process group destroyed"; 2 of 6 CI runs of the 2-rank tests)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        import logging

        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
