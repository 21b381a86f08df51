"""Read the model of a torchtitan DCP checkpoint outside of training (eval, export, sweeps).

torchtitan saves the model's state dict flattened at the top level of the checkpoint (keys such as
"layers.0.attention.wq.weight") beside "optimizer", "dataloader", ... and our "adahop" plan entry.
The job that wrote it is described by `<dump_folder>/adahop_job.json` (written by adahop.train);
a TOML config given on the command line takes precedence.

A checkpoint is read without running code from it (see check_checkpoint): torch's DCP metadata is a
pickle, so it goes through an unpickler that resolves only DCP's own metadata classes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import sys
from pathlib import Path

import torch
import torch.nn as nn

from .config import ConfigError, check_config_file, validate_upstream_values
from .config_types import check_value
from .data.tokenizer import tokenizer_folder
from .files import atomic_dir_write  # noqa: F401  (a public name of this module)

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


def _overlay(obj, values: dict, skip: set[str], where: str, unknown: list[str], prefix: str = "") -> None:
    """Set the dataclass tree `obj` from the nested dict `values` (read from `where`), except the dotted keys in
    `skip`. Each value must have its field's type (ConfigError naming the key and `where`); keys the config does
    not have are collected in `unknown`."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            unknown.append(key)
            continue
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _overlay(current, value, skip, where, unknown, key + ".")
        elif key not in skip:
            check_value(key, value, fields[name].type, f"in {where}")
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
    # a missing or broken TOML, an unknown key, a wrong type (in the TOML or on the command line): before torchtitan
    # reads them
    check_config_file(args)
    if any(a.split("=", 1)[0] in ("--job.config_file", "--job.config-file") for a in args):
        config = ConfigManager().parse_args(args)
    else:
        config = _config_from_job_file(checkpoint_path, args)
    validate_upstream_values(config, evaluating=True)
    return config


def _config_from_job_file(checkpoint_path: str | Path | None, args: list[str]):
    """The config of the run's adahop_job.json (found from `checkpoint_path`) with the CLI `args` on top."""
    from torchtitan.config.manager import ConfigManager

    job_file = find_job_file(checkpoint_path) if checkpoint_path is not None else None
    if job_file is None:
        where = f"in {checkpoint_path} or its parents" if checkpoint_path is not None else "(no --checkpoint_path)"
        raise CheckpointError(
            f"no --job.config_file given and no {JOB_FILE} found {where}: pass the TOML the checkpoint was trained with"
        )
    try:
        job = json.loads(job_file.read_text())
        if not isinstance(job, dict):
            raise ValueError(f"holds a {type(job).__name__}, not a job config")
    except (ValueError, OSError) as e:
        raise CheckpointError(
            f"{job_file} cannot be read ({e}): pass the TOML the checkpoint was trained with as --job.config_file"
        ) from None
    model = job.get("model")
    assets = model.get("hf_assets_path") if isinstance(model, dict) else None
    if assets is not None:  # used before _overlay checks the rest: checked here the same way
        check_value("model.hf_assets_path", assets, str, f"in {job_file}")
    if assets and "model.hf_assets_path" not in _cli_keys(args):
        # a run started in the repository root, read from another folder: the same tokenizer
        args += ["--model.hf_assets_path", tokenizer_folder(assets)]  # else torchtitan warns of its default path
    config = ConfigManager().parse_args(args)
    unknown: list[str] = []
    _overlay(config, job, _cli_keys(args), str(job_file), unknown)
    if unknown:  # a job file of another adahop / torchtitan version: said, not silently dropped
        print(
            f"[adahop] {job_file}: not keys of this version's config, not used: {', '.join(unknown)}", file=sys.stderr
        )
    return config


def model_args_for(job_config):
    from torchtitan.protocols.train_spec import get_train_spec

    try:
        spec = get_train_spec(job_config.model.name)
    except ValueError:  # torchtitan's "TrainSpec ... is not registered"
        raise ConfigError(
            "model.name", job_config.model.name, "a registered train spec, e.g. 'adahop_llama3'"
        ) from None
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


# ---------------------------------------------------------------------------------------------------
# Reading a DCP step folder safely.
#
# torch's DCP `.metadata` is a pickle, and unpickling runs whatever callables the file names: a crafted
# checkpoint runs code as soon as it is read. So the metadata is read here by an unpickler that resolves
# only the classes torch's DCP metadata is made of, and every load goes through a reader that uses it.
# Byte entries (non-tensor state, e.g. the AdaHOP plan) are loaded by torch with weights_only=False; they
# are checked with weights_only=True first.

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_METADATA_CLASSES = {
    (_DCP_METADATA, name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # how a torch.layout pickles
    ("collections", "OrderedDict"),
    # StorageMeta.checkpoint_id: the path the checkpoint was saved to
    *(("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
    *(("pathlib._local", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
}
_STEP_DIR = re.compile(r"^step-(\d+)$")
TRUST_NOTE = (
    "loading a checkpoint unpickles it, which can run code: load checkpoints only from sources you trust "
    "(README.md, 'Checkpoints')"
)


class _ForbiddenGlobal(Exception):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in `allowed` (plus torch dtypes when `dtypes`); anything else is refused."""

    def __init__(self, file, allowed: set[tuple[str, str]], dtypes: bool):
        super().__init__(file)
        self.allowed, self.dtypes = allowed, dtypes

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed or (
            self.dtypes and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def _reason(exc: BaseException) -> str:
    """The informative line of `exc`'s message (torch wraps a weights_only failure in advice to load with
    weights_only=False: exactly what must not be done with a checkpoint that fails this check)."""
    text = str(exc)
    if "Weights only load failed" in text:
        text = (
            text.split("WeightsUnpickler error:", 1)[1]
            if "WeightsUnpickler error:" in text
            else (text.split("trusted source.", 1)[-1])
        )
        text = text.split("Check the documentation", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


class _Damage(Exception):
    """A file of a step folder that cannot be read: `file` (relative to the folder) and what is wrong."""

    def __init__(self, file: str, what: str):
        super().__init__(f"{file}: {what}")
        self.file, self.what = file, what


def _refuse(step_dir: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load checkpoint {step_dir}: {what}, which a checkpoint written by "
        f"torch's DCP never holds (a crafted or foreign file?); {TRUST_NOTE}"
    )


def _read_metadata(step_dir: Path):
    """The DCP Metadata of `step_dir`, read with the restricted unpickler."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(step_dir / ".metadata", "rb") as f:
            metadata = _RestrictedUnpickler(f, _METADATA_CLASSES, dtypes=True).load()
    except _ForbiddenGlobal as e:
        raise _refuse(step_dir, f"its .metadata references {e}") from None
    except Exception as e:  # noqa: BLE001  (a damaged pickle raises many types)
        raise _Damage(".metadata", f"cannot be read ({_reason(e)})") from None
    if not isinstance(metadata, Metadata):
        raise _Damage(".metadata", f"holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


def _entry_files(step_dir: Path, metadata, fqns=None) -> dict[str, list]:
    """relative file -> the storage records of `metadata` in it (of the entries `fqns`, default all)."""
    files: dict[str, list] = {}
    for index, info in metadata.storage_data.items():
        if fqns is None or index.fqn in fqns:
            files.setdefault(info.relative_path, []).append((index, info))
    return files


def _check_files(step_dir: Path, metadata) -> None:
    """Every data file the metadata points into exists inside `step_dir` and is long enough."""
    for rel, records in _entry_files(step_dir, metadata).items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise _refuse(step_dir, f"its .metadata points to the file {rel!r} outside the folder")
        path = step_dir / rel
        if not path.is_file():
            raise _Damage(rel, "missing (the checkpoint's .metadata points into it)")
        need = max(info.offset + info.length for _, info in records)
        size = path.stat().st_size
        if size < need:
            raise _Damage(
                rel,
                f"{size} bytes, but the checkpoint's .metadata needs {need} (truncated: an interrupted save or copy?)",
            )


def _load_entry(step_dir: Path, rel: str, fqn: str, data: bytes):
    """The byte entry `fqn` (stored in the file `rel`) loaded with weights_only=True: torch's own load of
    it unpickles with weights_only=False."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # noqa: BLE001  (a damaged entry raises many types)
        reason = _reason(e)
        if isinstance(e, pickle.UnpicklingError) and re.search(r"\bglobal\b", reason, re.IGNORECASE):
            raise _refuse(step_dir, f"its entry {fqn!r} unpickles more than plain data ({reason})") from None
        raise _Damage(rel, f"entry {fqn!r} cannot be read ({reason})") from None


def _check_entries(step_dir: Path, metadata) -> None:
    """Every byte entry loads as plain data; the data loader's state (a pickle inside) has no globals."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    byte_fqns = {fqn for fqn, m in metadata.state_dict_metadata.items() if isinstance(m, BytesStorageMetadata)}
    for rel, records in _entry_files(step_dir, metadata, byte_fqns).items():
        with open(step_dir / rel, "rb") as f:
            for index, info in records:
                if info.transform_descriptors:  # compressed or otherwise transformed: torch decodes it on load
                    continue
                f.seek(info.offset)
                value = _load_entry(step_dir, rel, index.fqn, f.read(info.length))
                if index.fqn.startswith("dataloader.") and isinstance(value, bytes):
                    try:  # torchtitan pickles the data loader's state and unpickles it on resume
                        _RestrictedUnpickler(io.BytesIO(value), set(), dtypes=False).load()
                    except _ForbiddenGlobal as e:
                        raise _refuse(step_dir, f"its entry {index.fqn!r} references {e}") from None
                    except Exception as e:  # noqa: BLE001
                        raise _Damage(rel, f"entry {index.fqn!r} cannot be read ({_reason(e)})") from None


def _checked(step_dir: Path, all_entries: bool):
    metadata = _read_metadata(step_dir)
    _check_files(step_dir, metadata)
    if all_entries:
        _check_entries(step_dir, metadata)
    return metadata


def step_number(step_dir: str | Path) -> int | None:
    """N of a folder named step-N (torchtitan's checkpoint folders), else None."""
    m = _STEP_DIR.match(Path(step_dir).name)
    return int(m.group(1)) if m else None


def previous_loadable_step(step_dir: str | Path) -> Path | None:
    """The newest step-K folder beside the step-N folder `step_dir` with K < N that passes
    check_checkpoint(all_entries=True); None if there is none."""
    step_dir = Path(step_dir)
    n = step_number(step_dir)
    if n is None or not step_dir.parent.is_dir():
        return None
    earlier = sorted(
        ((k, p) for p in step_dir.parent.iterdir() if (k := step_number(p)) is not None and k < n), reverse=True
    )
    for _, candidate in earlier:
        if not (candidate / ".metadata").is_file():
            continue
        try:
            _checked(candidate, all_entries=True)
            return candidate
        except (_Damage, CheckpointError):
            continue
    return None


def _damaged(step_dir: Path, file: str, what: str) -> CheckpointError:
    previous = previous_loadable_step(step_dir)
    if previous is not None:
        k = step_number(previous)
        hint = (
            f"the previous loadable checkpoint is {previous} (adahop.train: --checkpoint.load_step {k}; "
            f"eval / export / sweep: --checkpoint_path {previous})"
        )
    else:
        hint = f"no earlier step-N folder beside it ({step_dir.parent}) is loadable"
    return CheckpointError(f"checkpoint {step_dir} is damaged: {file}: {what}; {hint}")


def check_checkpoint(step_dir: str | Path, *, all_entries: bool = False):
    """The DCP Metadata of the step folder `step_dir`, read without running code from it, after checking
    that every data file it points into is there and long enough; with `all_entries`, also that every
    byte entry (train state, data loader, plan, ...) loads as plain data (what a resume loads).

    Raises CheckpointError: not a DCP folder; refused (the metadata or an entry references code: a
    crafted checkpoint); or damaged, naming the step folder, the file and the previous loadable step.
    """
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        raise CheckpointError(f"checkpoint {step_dir} does not exist (expected a DCP step-N folder)")
    if not (step_dir / ".metadata").is_file():
        raise CheckpointError(
            f"checkpoint {step_dir} is not a readable DCP checkpoint: it has no .metadata file "
            "(expected a step-N folder written by training)"
        )
    try:
        return _checked(step_dir, all_entries)
    except _Damage as d:
        raise _damaged(step_dir, d.file, d.what) from None


def checked_reader(step_dir: str | Path, metadata):
    """A FileSystemReader for `step_dir` that hands DCP `metadata` (from check_checkpoint) instead of
    unpickling the .metadata file: pass it to dcp.load as storage_reader."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class CheckedReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return CheckedReader(str(step_dir))


def _planner(step_dir: Path, metadata):
    """DCP's default load planner, with each byte entry checked as plain data before torch unpickles it."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class CheckedPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            rel = metadata.storage_data[read_item.storage_index].relative_path
            _load_entry(step_dir, rel, read_item.dest_index.fqn, value.getvalue())
            value.seek(0)
            super().load_bytes(read_item, value)

    return CheckedPlanner()


def load_checkpoint_entries(state: dict, step_dir: str | Path, metadata=None) -> None:
    """dcp.load of `state` from `step_dir` through the checked reader and planner; any failure (torch's
    CheckpointException is a BaseException) becomes one CheckpointError naming the folder and files."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    step_dir = Path(step_dir)
    metadata = check_checkpoint(step_dir) if metadata is None else metadata
    try:
        with warnings.catch_warnings():  # a tool reads a checkpoint in one process: that is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=checked_reader(step_dir, metadata), planner=_planner(step_dir, metadata))
    except (Exception, CheckpointException) as e:  # noqa: BLE001
        errors = [exc for exc, _ in e.failures.values()] if isinstance(e, CheckpointException) else [e]
        for exc in errors:
            if isinstance(exc, CheckpointError):
                raise exc from None
            if isinstance(exc, _Damage):
                raise _damaged(step_dir, exc.file, exc.what) from None
        wanted = {k.split(".", 1)[0] for k in state}
        files = sorted(
            rel
            for rel, records in _entry_files(step_dir, metadata).items()
            if any(index.fqn.split(".", 1)[0] in wanted for index, _ in records)
        )
        raise _damaged(step_dir, ", ".join(files) or ".metadata", f"could not be read ({_reason(errors[0])})") from None


def load_model_state(model: nn.Module, checkpoint_path: str | Path) -> None:
    """Fill `model` in place from the DCP checkpoint at `checkpoint_path` (a step-N folder)."""
    path = Path(checkpoint_path)
    metadata = check_checkpoint(path)
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
    load_checkpoint_entries(wanted, path, metadata)
    model.load_state_dict(wanted, strict=False)
