"""Resuming a run on a different number of data-parallel ranks: checked before anything is built.

torchtitan reshards the model and optimizer of a DCP checkpoint onto any FSDP layout, and the AdaHOP plan
(checkpoint key "adahop") is the same on every rank, so both load on any number of GPUs. The data
loader's position cannot move: upstream stores one entry per data-parallel rank
("dataloader.dp_rank_<i>") and stops with a bare assertion or a missing-key error deep inside the load
when the rank count differs. ``check_resume_ranks`` reads the checkpoint's metadata first and refuses
such a resume with the two ways out, unless the data loader is excluded from loading (the data stream
then starts again from its beginning).
"""

from __future__ import annotations

import os
import re

from .config import ConfigError

_STEP_DIR = re.compile(r"step-(\d+)")
_DP_KEY = re.compile(r"^dataloader\.dp_rank_(\d+)$")


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


def checkpoint_to_resume(job_config) -> str | None:
    """The checkpoint whose data loader state torchtitan's CheckpointManager.load() will read, or None
    (fresh start, model-only load, or the loader restored by torchft instead)."""
    ckpt = job_config.checkpoint
    if not ckpt.enable:
        return None
    if getattr(ckpt, "enable_ft_dataloader_checkpoints", False) and job_config.fault_tolerance.enable:
        return None  # torchft keeps the data loader per replica group
    folder = os.path.join(job_config.job.dump_folder, ckpt.folder)
    if not os.path.isdir(folder):
        if ckpt.initial_load_path and not ckpt.initial_load_model_only and not ckpt.initial_load_in_hf:
            return ckpt.initial_load_path  # a full training state to continue from
        return None
    step = ckpt.load_step if ckpt.load_step != -1 else _latest_step(folder)
    if step in (-1, 0):  # nothing saved yet / step 0 is loaded model-only
        return None
    return os.path.join(folder, f"step-{step}")


def saved_dp_ranks(step_dir: str) -> int | None:
    """How many data-parallel ranks wrote the data loader state of a DCP step folder (None: none saved)."""
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(step_dir).read_metadata().state_dict_metadata
    ranks = {int(m.group(1)) for k in keys if (m := _DP_KEY.match(k))}
    return len(ranks) or None


def dp_degree(job_config, world_size: int) -> int:
    """The data-parallel degree torchtitan will build for `world_size` ranks (dp_replicate x dp_shard)."""
    p = job_config.parallelism
    if p.data_parallel_shard_degree != -1:
        return p.data_parallel_replicate_degree * p.data_parallel_shard_degree
    others = p.tensor_parallel_degree * p.pipeline_parallel_degree * p.context_parallel_degree
    return world_size // others


def check_resume_ranks(job_config, world_size: int) -> None:
    """Raise ConfigError if the checkpoint to be resumed was written by another data-parallel degree."""
    if "dataloader" in job_config.checkpoint.exclude_from_loading:
        return
    step_dir = checkpoint_to_resume(job_config)
    if step_dir is None or not os.path.isfile(os.path.join(step_dir, ".metadata")):
        return  # a load_step that does not exist is upstream's error to report
    saved = saved_dp_ranks(step_dir)
    here = dp_degree(job_config, world_size)
    if saved is not None and saved != here:
        raise ConfigError(
            "checkpoint.exclude_from_loading", list(job_config.checkpoint.exclude_from_loading),
            "a list that contains 'dataloader' when the data-parallel degree changes",
            f"{step_dir} was written by {saved} data-parallel ranks and this run has {here}; the model, "
            f"optimizer and AdaHOP plan reshard, the data loader's position does not. Resume with {saved} "
            "data-parallel ranks to continue the data stream exactly, or pass "
            "--checkpoint.exclude_from_loading dataloader to restart the data stream from its beginning",
        )
