"""Read the model of a torchtitan DCP checkpoint outside of training (eval, export, sweeps).

torchtitan saves the model's state dict flattened at the top level of the checkpoint (keys such as
"layers.0.attention.wq.weight") beside "optimizer", "dataloader", ... and our "adahop" plan entry.
The job that wrote it is described by `<dump_folder>/adahop_job.json` (written by adahop.train);
a TOML config given on the command line takes precedence.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

JOB_FILE = "adahop_job.json"


class CheckpointError(ValueError):
    """A missing, unreadable or mismatching checkpoint, with what was expected."""


def find_job_file(checkpoint_path: str | Path) -> Path | None:
    """The adahop_job.json of the run that wrote `checkpoint_path` (searched in it and its parents)."""
    p = Path(checkpoint_path).resolve()
    for folder in [p, *list(p.parents)[:4]]:
        if (folder / JOB_FILE).is_file():
            return folder / JOB_FILE
    return None


def _cli_keys(args: list[str]) -> set[str]:
    """Dotted config keys given on a command line ("--training.seq_len 64" -> "training.seq_len")."""
    keys = set()
    for a in args:
        if a.startswith("--") and "." in a:
            key = a[2:].split("=", 1)[0].replace("-", "_")
            keys.add(key[3:] if key.startswith("no_") else key)
            keys.add(key.replace(".no_", "."))
    return keys


def _overlay(obj, values: dict, skip: set[str], prefix: str = "") -> None:
    """Set the dataclass tree `obj` from the nested dict `values`, except the dotted keys in `skip`."""
    for name, value in values.items():
        if not hasattr(obj, name):
            continue
        key = f"{prefix}{name}"
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _overlay(current, value, skip, key + ".")
        elif key not in skip:
            setattr(obj, name, value)


def load_job_config(checkpoint_path: str | Path | None, cli_args: list[str]):
    """A torchtitan JobConfig (merged with adahop.config) for the run that wrote `checkpoint_path`.

    With --job.config_file: that TOML plus the CLI overrides. Without: the run's adahop_job.json
    (found beside the checkpoint), with any CLI overrides on top.
    """
    from adahop.titan import setup

    setup()
    from torchtitan.config.manager import ConfigManager

    args = list(cli_args)
    if not any(a.split("=", 1)[0] == "--job.custom_config_module" for a in args):
        args += ["--job.custom_config_module", "adahop.config"]
    config = ConfigManager().parse_args(args)
    if any(a.split("=", 1)[0] in ("--job.config_file", "--job.config-file") for a in args):
        return config
    job_file = find_job_file(checkpoint_path) if checkpoint_path is not None else None
    if job_file is None:
        where = f"in {checkpoint_path} or its parents" if checkpoint_path is not None else "(no --checkpoint_path)"
        raise CheckpointError(
            f"no --job.config_file given and no {JOB_FILE} found {where}: "
            "pass the TOML the checkpoint was trained with"
        )
    _overlay(config, json.loads(job_file.read_text()), _cli_keys(args))
    return config


def model_args_for(job_config):
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job_config.model.name)
    if job_config.model.flavor not in spec.model_args:
        raise CheckpointError(
            f"model.flavor {job_config.model.flavor!r} is not a flavor of {job_config.model.name}: "
            + ", ".join(spec.model_args)
        )
    args = dataclasses.replace(spec.model_args[job_config.model.flavor])
    args.update_from_config(job_config)
    return spec, args


def build_model(job_config, device: str = "cpu") -> tuple[nn.Module, object]:
    spec, args = model_args_for(job_config)
    with torch.device("meta"):
        model = spec.model_cls(args)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device(device))
    return model, args


def load_model_state(model: nn.Module, checkpoint_path: str | Path) -> None:
    """Fill `model` in place from the DCP checkpoint at `checkpoint_path` (a step-N folder)."""
    import torch.distributed.checkpoint as dcp

    path = Path(checkpoint_path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a DCP step-N folder)")
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001  (DCP raises several types for a broken folder)
        raise CheckpointError(f"checkpoint {path} is not a readable DCP checkpoint: {e}") from e
    wanted = {k: v for k, v in model.state_dict().items() if not k.endswith("freqs_cis")}
    stored = metadata.state_dict_metadata
    missing = sorted(set(wanted) - set(stored))
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} model tensors, e.g. {missing[:3]}: "
            "a different model shape? (check model.flavor)"
        )
    for key, tensor in wanted.items():
        shape = tuple(getattr(stored[key], "size", ()))
        if shape != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {shape} but the configured model wants {tuple(tensor.shape)} "
                "(a different model shape: check model.flavor)"
            )
    try:
        dcp.load(wanted, checkpoint_id=str(path))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from e
    model.load_state_dict(wanted, strict=False)


def atomic_dir_write(out: Path):
    """Context: write into `out`.tmp and move it to `out` only when everything was written."""
    import contextlib
    import shutil

    @contextlib.contextmanager
    def ctx():
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)

    return ctx()
