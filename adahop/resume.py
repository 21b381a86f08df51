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

_STEP_DIR = re.compile(r"^step-(\d+)$")
_DP_KEY = re.compile(r"^dataloader\.dp_rank_(\d+)$")


def checkpoint_to_resume(job_config) -> str | None:
    """The step folder torchtitan's CheckpointManager.load() will read, or None (fresh start)."""
    ckpt = job_config.checkpoint
    if not ckpt.enable:
        return None
    folder = os.path.join(job_config.job.dump_folder, ckpt.folder)
    if not os.path.isdir(folder):
        return None  # initial_load_path (model only by default) or nothing: no data loader state
    steps = [int(m.group(1)) for d in os.listdir(folder) if (m := _STEP_DIR.match(d))
             and os.path.isfile(os.path.join(folder, d, ".metadata"))]
    if ckpt.load_step != -1:
        return os.path.join(folder, f"step-{ckpt.load_step}")
    return os.path.join(folder, f"step-{max(steps)}") if steps else None


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
