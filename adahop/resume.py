"""Checks of a resumed checkpoint against this run's config, before anything is built (``check_resume``).

torchtitan's CheckpointManager loads a checkpoint only when training starts, after the model, the data
and adahop_job.json were set up, and a checkpoint that does not fit the config fails deep inside the
load with a bare error (or loads silently). ``check_resume`` reads the checkpoint first, through
adahop.checkpoint_io.check_checkpoint (a damaged or crafted checkpoint is refused there, naming the file),
and refuses with what differs and the ways out:

* model: every tensor shape of the configured model (``model.flavor``) equals the checkpoint's (a
  checkpoint with more layers would otherwise load silently into the first ones); the message names the
  flavor(s) whose shapes the checkpoint has;
* a model-only checkpoint (``checkpoint.last_save_model_only``) resumed as a training state, and a
  checkpoint without the AdaHOP plan (key "adahop", written by a run without our converter);
* data loader: its position cannot move to another number of data-parallel ranks (``check_resume_ranks``;
  the model, optimizer and plan reshard);
* ``training.steps`` below the checkpoint's step (the run would train nothing);
* the plan: a resumed run keeps the checkpoint's plan (or calibration votes), so the settings that made
  it (adahop.calibration.plan_settings) must be this run's too, unless ``plan_file`` replaces it or
  ``--checkpoint.exclude_from_loading adahop`` drops it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import torch

from .config import ConfigError, converter_enabled, mx_config

_STEP_DIR = re.compile(r"step-(\d+)")
_DP_KEY = re.compile(r"^dataloader\.dp_rank_(\d+)$")
# the checkpoint entries of torchtitan's own states beside the model's (flattened at the top level)
_TRAINER_STATES = ("optimizer", "lr_scheduler", "dataloader", "train_state")
PLAN_KEY = "adahop.adahop_state_json"  # adahop.train registers the first converter's plan as "adahop"
STEP_KEY = "train_state.step"


def _latest_step(folder: str) -> int:
    """The step torchtitan's CheckpointManager._find_load_step picks in `folder` (-1: none): the largest N
    of a step-N entry holding DCP metadata or a safetensors index."""
    steps = []
    for name in os.listdir(folder):
        m = _STEP_DIR.search(name)
        probes = (os.path.join(folder, name, ".metadata"), os.path.join(folder, name, "model.safetensors.index.json"))
        if m and any(os.path.isfile(p) for p in probes):
            steps.append(int(m.group(1)))
    return max(steps, default=-1)


def checkpoint_to_load(job_config) -> tuple[str, bool] | None:
    """(the checkpoint torchtitan's CheckpointManager.load() will read, whether it loads the model only),
    or None (fresh start, or weights from HF safetensors)."""
    ckpt = job_config.checkpoint
    if not ckpt.enable:
        return None
    folder = os.path.join(job_config.job.dump_folder, ckpt.folder)
    if not os.path.isdir(folder):
        if ckpt.initial_load_path and not ckpt.initial_load_in_hf:
            return ckpt.initial_load_path, bool(ckpt.initial_load_model_only)
        return None
    step = ckpt.load_step if ckpt.load_step != -1 else _latest_step(folder)
    if step == -1:  # nothing saved yet
        return None
    return os.path.join(folder, f"step-{step}"), step == 0  # step 0 is loaded model-only


def checkpoint_to_resume(job_config) -> str | None:
    """The checkpoint whose data loader state torchtitan's CheckpointManager.load() will read, or None
    (fresh start, model-only load, or the loader restored by torchft instead)."""
    ckpt = job_config.checkpoint
    if getattr(ckpt, "enable_ft_dataloader_checkpoints", False) and job_config.fault_tolerance.enable:
        return None  # torchft keeps the data loader per replica group
    found = checkpoint_to_load(job_config)
    return found[0] if found is not None and not found[1] else None


def saved_dp_ranks(step_dir: str, metadata=None) -> int | None:
    """How many data-parallel ranks wrote the data loader state of a DCP step folder (None: none saved);
    `metadata`: its DCP metadata, read here (adahop.checkpoint_io.check_checkpoint) if not given."""
    from .checkpoint_io import check_checkpoint

    keys = (metadata or check_checkpoint(step_dir)).state_dict_metadata
    ranks = {int(m.group(1)) for k in keys if (m := _DP_KEY.match(k))}
    return len(ranks) or None


def dp_degree(job_config, world_size: int) -> int:
    """The data-parallel degree torchtitan will build for `world_size` ranks (dp_replicate x dp_shard)."""
    p = job_config.parallelism
    if p.data_parallel_shard_degree != -1:
        return p.data_parallel_replicate_degree * p.data_parallel_shard_degree
    others = p.tensor_parallel_degree * p.pipeline_parallel_degree * p.context_parallel_degree
    return world_size // others


def check_resume_ranks(job_config, world_size: int, metadata=None) -> None:
    """Raise ConfigError if the checkpoint to be resumed was written by another data-parallel degree
    (`metadata`: its DCP metadata, if read already)."""
    if "dataloader" in job_config.checkpoint.exclude_from_loading:
        return
    step_dir = checkpoint_to_resume(job_config)
    if step_dir is None or not os.path.isfile(os.path.join(step_dir, ".metadata")):
        return  # a load_step that does not exist is upstream's error to report
    saved = saved_dp_ranks(step_dir, metadata)
    here = dp_degree(job_config, world_size)
    if saved is not None and saved != here:
        raise ConfigError(
            "checkpoint.exclude_from_loading",
            list(job_config.checkpoint.exclude_from_loading),
            "a list that contains 'dataloader' when the data-parallel degree changes",
            f"{step_dir} was written by {saved} data-parallel ranks and this run has {here}; the model, "
            f"optimizer and AdaHOP plan reshard, the data loader's position does not. Resume with {saved} "
            "data-parallel ranks to continue the data stream exactly, or pass "
            "--checkpoint.exclude_from_loading dataloader to restart the data stream from its beginning",
        )


def saved_values(step_dir: str, keys: list[str], metadata=None) -> dict[str, Any]:
    """The plain (non-tensor) entries `keys` of a DCP checkpoint, by flattened name ("train_state.step"),
    read in this process through adahop.checkpoint_io's checked reader (`metadata`: its check_checkpoint)."""
    from .checkpoint_io import load_checkpoint_entries

    state: dict[str, dict] = {}
    for key in keys:
        top, _, rest = key.partition(".")
        state.setdefault(top, {})[rest] = None
    load_checkpoint_entries(state, step_dir, metadata)
    return {key: state[key.partition(".")[0]][key.partition(".")[2]] for key in keys}


def _converts(job_config) -> bool:
    """Whether this run registers the AdaHOP plan state (adahop.train: a converter with a calibrator)."""
    if not converter_enabled(job_config):
        return False
    mx = mx_config(job_config)
    return bool(mx.enable_mxfp4_linear or mx.enable_mxfp4_gmm or mx.enable_mxfp4_fa)


def _loads_plan(job_config) -> bool:
    """Whether this run loads the checkpoint's AdaHOP plan: not when excluded, nor with a plan_file, which
    replaces it (adahop.train excludes it from loading then)."""
    excluded = "adahop" in job_config.checkpoint.exclude_from_loading
    return _converts(job_config) and not excluded and not mx_config(job_config).calibration.plan_file


def model_shapes(job_config, flavor: str) -> dict[str, tuple[int, ...]]:
    """The state-dict tensor shapes of `flavor` of the configured model (built on the meta device)."""
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job_config.model.name)
    args = dataclasses.replace(spec.model_args[flavor])
    args.update_from_config(job_config)
    with torch.device("meta"):
        model = spec.model_cls(args)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("freqs_cis")}


def _saved_model_shapes(metadata) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    other = _TRAINER_STATES + ("adahop",)
    return {
        k: tuple(m.size)
        for k, m in metadata.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata) and not k.split(".")[0].startswith(other)
    }


def check_resume_model(job_config, step_dir: str, metadata) -> None:
    """Raise ConfigError (on model.flavor) if the configured model's tensors are not exactly the
    checkpoint's, naming the flavor(s) whose shapes the checkpoint has."""
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job_config.model.name)
    flavor = job_config.model.flavor
    if flavor not in spec.model_args:
        return  # the config validation names the flavors
    saved = _saved_model_shapes(metadata)
    wanted = model_shapes(job_config, flavor)
    if saved == wanted:
        return
    matching = []
    for other in spec.model_args:
        try:
            if other != flavor and model_shapes(job_config, other) == saved:
                matching.append(other)
        except Exception:  # noqa: BLE001  (a flavor this config cannot build matches nothing)
            continue
    first = next((k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)))
    differ = (
        f"{first} is {list(saved[first]) if first in saved else 'absent'} there and "
        f"{list(wanted[first]) if first in wanted else 'absent'} in flavor {flavor!r}"
    )
    fix = (
        f"Resume with --model.flavor {matching[0]}"
        if matching
        else "Resume with the flavor the checkpoint was trained with"
    )
    raise ConfigError(
        "model.flavor",
        flavor,
        f"the flavor of the resumed checkpoint: {' or '.join(map(repr, matching))}"
        if matching
        else f"the flavor of the resumed checkpoint (none of {job_config.model.name}'s flavors has its shapes)",
        f"{step_dir} holds another model ({differ}). {fix}, or use another job.dump_folder to train "
        f"model.flavor {flavor!r} from scratch",
    )


def _check_states_present(job_config, step_dir: str, keys) -> None:
    """Raise CheckpointError if a state this run loads is not in the checkpoint: a model-only checkpoint,
    or one without the AdaHOP plan."""
    from .checkpoint_io import CheckpointError

    excluded = set(job_config.checkpoint.exclude_from_loading)
    if checkpoint_to_resume(job_config) is None:
        excluded.add("dataloader")  # restored by torchft instead
    wanted = [s for s in _TRAINER_STATES if s not in excluded] + (["adahop"] if _loads_plan(job_config) else [])
    tops = {k.split(".")[0] for k in keys}
    missing = [s for s in wanted if s not in tops]
    if not missing:
        return
    if "train_state" in missing and "optimizer" in missing:
        raise CheckpointError(
            f"{step_dir} holds the model only (saved with checkpoint.last_save_model_only = true, upstream's "
            "default for the last step): no step, optimizer, data position or plan to resume. Resume a full "
            "checkpoint of an earlier step with --checkpoint.load_step N, or start a new run from these weights: "
            f"--checkpoint.initial_load_path {step_dir} with another job.dump_folder (a new optimizer, the data "
            "from its beginning, a new plan)"
        )
    if missing == ["adahop"]:
        raise CheckpointError(
            f"{step_dir} has no AdaHOP plan (checkpoint key 'adahop'): it was written by a run without the "
            "quantize.linear.mx converter. To continue it with MXFP4 layers, pass "
            "--checkpoint.exclude_from_loading adahop: the model, optimizer and data position load, and the plan "
            "is made anew from this config (calibration over the next calibration_steps steps, plan_file, or "
            "uniform); to continue it in high precision, remove quantize.linear.mx from model.converters"
        )
    # any other missing state is upstream's error to report


def check_resume_steps(job_config, step_dir: str, step: int) -> None:
    """Raise ConfigError if training.steps is below the resumed checkpoint's step (nothing would train)."""
    steps = job_config.training.steps
    if steps < step:
        raise ConfigError(
            "training.steps",
            steps,
            f"at least {step}, the step of the resumed checkpoint {step_dir}",
            f"With training.steps = {steps} the run would train nothing. Pass --training.steps N (N > {step}) "
            f"to train further, or resume an earlier checkpoint with --checkpoint.load_step N (N <= {steps})",
        )
    if steps == step:
        from torchtitan.tools.logging import logger

        logger.warning(f"[adahop] {step_dir} is at training.steps = {steps} already: nothing to train")


def check_resume_plan(job_config, step_dir: str, state: dict | None, step: int) -> None:
    """Raise ConfigError if the checkpoint's plan state (`state`; None: not loaded, see _loads_plan) was made
    with other settings than this run's, or if a plan not loaded would be calibrated again past
    training.steps."""
    from .calibration import check_plan_settings, plan_settings

    mx = mx_config(job_config)
    cal = mx.calibration
    remaining = job_config.training.steps - step
    if state is None:
        if cal.use_HT_calibration and not cal.plan_file and cal.calibration_steps > remaining:
            raise ConfigError(
                "quantize.linear.mx.calibration.calibration_steps",
                cal.calibration_steps,
                f"at most {remaining}, the steps left after the resumed step {step} (training.steps = "
                f"{job_config.training.steps})",
                "Without the checkpoint's plan (--checkpoint.exclude_from_loading adahop) the run calibrates again "
                "from the resumed step, and would end before the plan is made: raise training.steps or lower "
                "calibration_steps",
            )
        return
    check_plan_settings(
        state, plan_settings(mx), step_dir, f"over steps {step + 1}..{step + int(cal.calibration_steps)}"
    )


def check_load_settings(job_config) -> None:
    """ConfigError for load settings that torchtitan would ignore without a word (a load_step with checkpointing
    off, or with no checkpoint folder to read it from) or fail on under a traceback (an initial_load_path that is no
    folder)."""
    ckpt = job_config.checkpoint
    folder = os.path.join(job_config.job.dump_folder, ckpt.folder)
    if ckpt.load_step != -1:
        if not ckpt.enable:
            raise ConfigError(
                "checkpoint.load_step",
                ckpt.load_step,
                "-1 (unset) while checkpoint.enable is false",
                "nothing is loaded without checkpointing: add --checkpoint.enable, or leave load_step out",
            )
        if not os.path.isdir(folder):
            if ckpt.initial_load_path:
                hint = (
                    f"{folder} does not exist yet, so the run starts from checkpoint.initial_load_path "
                    f"{ckpt.initial_load_path} and would not use load_step: give one of the two"
                )
            else:
                hint = f"{folder} does not exist: is job.dump_folder the folder of the run to resume?"
            raise ConfigError(
                "checkpoint.load_step", ckpt.load_step, "a step saved in the run's checkpoint folder", hint
            )
    if (
        ckpt.enable
        and ckpt.initial_load_path
        and not os.path.isdir(folder)
        and not os.path.isdir(ckpt.initial_load_path)
    ):
        raise ConfigError(
            "checkpoint.initial_load_path",
            ckpt.initial_load_path,
            "a checkpoint step folder (e.g. <run>/checkpoint/step-N)",
            "no such folder",
        )


def check_resume(job_config, world_size: int) -> None:
    """Every check of the checkpoint this run will load against its config (see the module docstring);
    nothing to do for a fresh start. Raises ConfigError / CheckpointError."""
    check_load_settings(job_config)
    found = checkpoint_to_load(job_config)
    if found is None:
        return
    step_dir, model_only = found
    ckpt = job_config.checkpoint
    folder = os.path.join(job_config.job.dump_folder, ckpt.folder)
    if ckpt.load_step != -1 and os.path.isdir(folder) and not os.path.isdir(step_dir):
        saved = sorted(int(m.group(1)) for name in os.listdir(folder) if (m := _STEP_DIR.search(name)))
        raise ConfigError(
            "checkpoint.load_step",
            ckpt.load_step,
            f"a step saved in {folder}: " + (", ".join(map(str, saved)) or "none yet"),
            "leave --checkpoint.load_step out to resume the latest one",
        )
    if not os.path.isfile(os.path.join(step_dir, ".metadata")):
        if os.path.isfile(os.path.join(step_dir, "model.safetensors.index.json")):
            return  # a safetensors checkpoint: upstream reads and reports it
        key = "initial_load_path" if step_dir == ckpt.initial_load_path else "load_step"
        raise ConfigError(
            f"checkpoint.{key}",
            getattr(ckpt, key),
            "a step folder holding a checkpoint (DCP .metadata or model.safetensors.index.json)",
            f"{step_dir} holds neither (an interrupted save?): load an earlier step",
        )
    from .checkpoint_io import check_checkpoint

    # damaged or crafted checkpoints are refused here, naming the file (and the previous loadable step)
    metadata = check_checkpoint(step_dir, all_entries=not model_only)
    excluded = set(job_config.checkpoint.exclude_from_loading)
    if "model" not in excluded:
        check_resume_model(job_config, step_dir, metadata)
    if model_only:
        return
    keys = metadata.state_dict_metadata
    _check_states_present(job_config, step_dir, keys)
    check_resume_ranks(job_config, world_size, metadata)
    load_step = STEP_KEY in keys and "train_state" not in excluded
    load_plan = PLAN_KEY in keys and _loads_plan(job_config)
    values = saved_values(
        step_dir, [k for k, wanted in ((STEP_KEY, load_step), (PLAN_KEY, load_plan)) if wanted], metadata
    )
    step = int(values.get(STEP_KEY, 0))
    if load_step:
        check_resume_steps(job_config, step_dir, step)
    if _converts(job_config):
        state = json.loads(values[PLAN_KEY]) if load_plan else None
        check_resume_plan(job_config, step_dir, state, step)
