"""Config dataclasses that extend torchtitan's JobConfig (``--job.custom_config_module adahop.config``),
and the validation that runs before any model is built or any step runs.

torchtitan merges this ``JobConfig`` into its own one field by field (``ConfigManager._merge_configs``),
so ``[quantize.linear.mx]`` keeps upstream's fields (``filter_fqns``, ``recipe_name``, ...) and gains ours.

NOTE: no ``from __future__ import annotations`` here: torchtitan's config merge inspects ``field.type``
with ``dataclasses.is_dataclass``, which needs real types, not strings.
"""

import dataclasses
import functools
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union, get_args, get_origin

from adahop.modes import MODES, PAIR_KEYS, SEED_TABLE

#: the only MX recipe implemented: 1x32 blocks along the GEMM's inner dimension for both operands
RECIPES = ("mxfp4_1d1d",)
#: MX block size: every converted Linear must have in/out features that are multiples of it
MX_BLOCK = 32
CONVERTER_NAME = "quantize.linear.mx"
ADAHOP_CONVERTER_NAME = "quantize.linear.adahop"
#: the names the AdaHOP converter is registered under (adahop.titan): the configs' one, and its own
CONVERTER_NAMES = (CONVERTER_NAME, ADAHOP_CONVERTER_NAME)
#: [quantize.linear.mx.kernels] exactness_check
EXACTNESS_CHECKS = ("per_step", "per_gemm")


class ConfigError(ValueError):
    """An invalid adahop configuration value: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str, hint: str = ""):
        self.key, self.value, self.allowed, self.hint = key, value, allowed, hint
        msg = f"invalid config: {key} = {value!r}; allowed: {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


@dataclass
class Calibration:
    use_HT_calibration: bool = False
    """Run outlier-pattern calibration for the first `calibration_steps` steps, then fix each slot's mode
    from `layer_transform_config`. When false, `use_hadamard` picks hadamard or none for every slot."""

    calibration_steps: int = 30
    """Number of training steps whose x/W/g outlier labels are voted on (must be <= training.steps)."""

    visualize_outlier_patterns: bool = False
    """Write magnitude maps of x, W, g per layer and a summary grid (PNG) at the end of calibration."""

    visualization_save_folder: str = "./outlier_patterns"
    """Folder for the PNGs; a relative path is taken relative to job.dump_folder."""

    layer_transform_config: dict[str, str] = field(default_factory=lambda: dict(SEED_TABLE))
    """Pair key ("row-col": label of the GEMM's left operand - label of its right operand) -> mode.
    Keys not given keep the seed table's mode."""

    pattern_threshold: Optional[float] = None
    """(adahop) score above which a tensor is labelled row/col; None = adahop.patterns.DEFAULT_THRESHOLD."""

    plan_file: str = ""
    """(adahop) start from a saved plan (an adahop_plan.json) and skip calibration."""

    max_observed_rows: int = 4096
    """(adahop) classify at most this many rows of x/g per call (evenly strided subsample) for speed;
    0 = classify the whole tensor."""

    visualization_max_pixels: int = 256
    """(adahop) magnitude maps are max-pooled down to at most this many pixels per side."""


@dataclass
class Kernels:
    tile_b: str = "none"
    """(adahop) GPU fast path: which GEMMs give their right operand one fp8 scale per 128x128 tile instead
    of one per 1x128 row group: "none", "forward" (W of y = x W^T), "weights" (W in y and in the input
    gradient) or "all" (also x^T of the weight gradient). Same results; speed and how often a step is redone
    differ (docs/kernels.md)."""

    exactness_check: str = "per_step"
    """(adahop) GPU fast path: when training reads whether some MXFP4 block could not be held in fp8 (such a
    step is redone exactly): "per_step" (once per optimizer step, no host sync inside forward / backward) or
    "per_gemm" (after every GEMM, corrected in place: slower, for diagnostics)."""

    reference_only: bool = False
    """(adahop) run the torch reference of every kernel on every device instead of the GPU fast path: the same
    MXFP4 operands, GEMMs in float32, far slower. For debugging the kernels."""

    deficient_report: str = ""
    """(adahop) diagnostics: a path prefix; when training ends each rank writes <prefix>.<rank>.json with where
    the fp8 path met MXFP4 blocks it cannot hold (per GEMM slot and side, with their exponent gaps; recorded
    by GEMMs that check themselves: exactness_check = "per_gemm") and how many rows it recomputed. "" = off."""


@dataclass
class Attention:
    smooth_keys: bool = True
    """(adahop) MXFP4 attention subtracts each head's mean key over the sequence before Q K^T: softmax is unchanged,
    the quantized scores and dQ lose the keys' common offset (adahop/attention.py). The mean covers the whole
    sequence, so outputs depend on later tokens through rounding only."""

    quantize_dp: bool = False
    """(adahop) dP = dO V^T in MXFP4 (true) or from dO and V in bf16 (false): the score gradient takes the
    difference of two nearly equal terms, which MXFP4 dP swamps (docs/quality.md)."""


@dataclass
class MXLinear:
    mxfp8_dim1_cast_kernel_choice: Literal["triton", "cuda", "torch"] = "triton"
    """(upstream) a setting of torchao's MXFP8 converter, which adahop's quantize.linear.mx converter replaces:
    not read by adahop (kept so that upstream configs parse)."""

    recipe_name: str = "mxfp4_1d1d"
    """MX recipe. Only "mxfp4_1d1d" (1x32 blocks along K for both operands) is implemented."""

    filter_fqns: list[str] = field(default_factory=lambda: ["output"])
    """Module fqns (substring match, as upstream) whose Linear and MoE expert / attention modules stay in high
    precision. Leaving no Linear to convert is an error (unless enable_mxfp4_linear = false); an entry matching
    no module is a warning."""

    enable_mxfp4_linear: bool = True
    """Convert the targeted nn.Linear layers to AdaHOP MXFP4 linears."""

    enable_mxfp4_gmm: bool = False
    """MXFP4 AdaHOP grouped GEMMs for torchtitan MoE experts (each stack w1/w2/w3 is calibrated and
    planned like a Linear); expert parallel degree 1. A model without experts is refused."""

    enable_mxfp4_fa: bool = False
    """MXFP4 attention (Q K^T and P V, forward and backward; Hadamard along head_dim for Q K^T) in place
    of torchtitan's SDPA attention: flash-style kernels on CUDA, the torch reference elsewhere; settings in
    [quantize.linear.mx.attention]."""

    use_sr_grad: bool = False
    """Stochastic rounding (unbiased) when quantizing gradients."""

    use_hadamard: bool = True
    """Without calibration: every slot runs `hadamard` (true) or plain MXFP4 `none` (false).
    During calibration this is also the mode the layers run in."""

    use_randomized_hadamard: bool = False
    """Random +-1 signs before the Hadamard, fixed per layer (seeded from the layer fqn)."""

    outlier_k: int = 64
    """(adahop) rows/columns taken out to BF16 by the outlier-extraction modes (capped by the dimension)."""

    hadamard_size: int = 32
    """(adahop) block size of the block-diagonal Hadamard along K: a power of two from 2 to 128; above 32 it must
    divide the dims of every converted GEMM."""

    quant_error_freq: int = 0
    """(adahop) every N steps log the relative error of each converted layer's three GEMMs
    (forward_y, backward_gx, backward_gw) against a float32 GEMM; 0 = off."""

    quant_error_tokens: int = 1024
    """(adahop) tokens (rows of x and g) used for the quantization-error metric."""

    calibration: Calibration = field(default_factory=Calibration)
    """(adahop) outlier-pattern calibration: which operands are labelled row / col / none and which mode each
    pair of labels gets."""

    attention: Attention = field(default_factory=Attention)
    """(adahop) MXFP4 attention's settings (enable_mxfp4_fa)."""

    kernels: Kernels = field(default_factory=Kernels)
    """(adahop) settings of the GPU fast path (same results, other speed)."""


@dataclass
class QuantizedLinear:
    mx: MXLinear = field(default_factory=MXLinear)
    """AdaHOP MXFP4 training of nn.Linear layers (the quantize.linear.mx converter in model.converters)."""


@dataclass
class Quantize:
    linear: QuantizedLinear = field(default_factory=QuantizedLinear)
    """Low-precision training of linear layers."""


@dataclass
class JobConfig:
    quantize: Quantize = field(default_factory=Quantize)
    """Quantized training (adahop's keys are under quantize.linear.mx)."""


def _field_docstrings(cls) -> dict[str, str]:
    """The docstring under each field of `cls` (the string literal after its annotated assignment)."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _help_from_docstrings(*classes) -> None:
    """Give each field its docstring as `--help` text (tyro reads a field's metadata["help"] first). Needed because
    torchtitan merges these classes into its own (ConfigManager._merge_configs builds new classes without source),
    so tyro would look the docstrings up in upstream's classes and show upstream's MXFP8 text for our keys."""
    import types

    for cls in classes:
        docs = _field_docstrings(cls)
        for f in dataclasses.fields(cls):
            if f.name in docs:
                f.metadata = types.MappingProxyType({**f.metadata, "help": docs[f.name]})


_help_from_docstrings(Calibration, Kernels, Attention, MXLinear, QuantizedLinear, Quantize, JobConfig)


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------
_P = "quantize.linear.mx"
_C = "quantize.linear.mx.calibration"


def mx_config(job_config) -> Any:
    """The [quantize.linear.mx] section of a (merged) torchtitan JobConfig."""
    return job_config.quantize.linear.mx


def converter_enabled(job_config) -> bool:
    return any(name in CONVERTER_NAMES for name in job_config.model.converters or [])


def check_one_adahop_converter(job_config) -> None:
    """Both names of the AdaHOP converter in model.converters would make two converters, the second converting
    the first one's layers again (an AdaHOPLinear is an nn.Linear). Raises ConfigError."""
    converters = list(job_config.model.converters or [])
    named = [name for name in converters if name in CONVERTER_NAMES]
    if len(named) > 1:
        raise ConfigError(
            "model.converters",
            converters,
            f"one of {' | '.join(map(repr, CONVERTER_NAMES))}",
            f"{' and '.join(map(repr, named))} both name the AdaHOP converter, which would convert its layers "
            "twice; keep one",
        )


def _need(cfg, name: str):
    if not hasattr(cfg, name):
        raise ConfigError(
            f"{_P}.{name}",
            "<missing>",
            "a JobConfig merged with adahop.config",
            "run through `python -m adahop.train` or pass --job.custom_config_module adahop.config",
        )
    return getattr(cfg, name)


def resolved_table(mx) -> dict[str, str]:
    """The seed table overridden key by key by layer_transform_config."""
    table = dict(SEED_TABLE)
    table.update(dict(mx.calibration.layer_transform_config or {}))
    return table


def validate_mx(job_config) -> None:
    """Check every adahop key of `job_config` (no model needed). Raises ConfigError."""
    if not converter_enabled(job_config):
        return
    check_one_adahop_converter(job_config)
    mx = mx_config(job_config)
    for name in ("enable_mxfp4_linear", "calibration", "outlier_k"):
        _need(mx, name)
    from adahop.config_types import check_config_types

    # typed here too: torchtitan's own entry point does not run validate_job_config's check of the whole tree,
    # and the layers would read bool("false") as True
    check_config_types(mx, f"{_P}.")
    if mx.recipe_name not in RECIPES:
        raise ConfigError(f"{_P}.recipe_name", mx.recipe_name, " | ".join(repr(r) for r in RECIPES))
    if mx.enable_mxfp4_gmm and int(job_config.parallelism.expert_parallel_degree) != 1:
        raise ConfigError(
            f"{_P}.enable_mxfp4_gmm",
            mx.enable_mxfp4_gmm,
            "false when parallelism.expert_parallel_degree != 1",
            f"MXFP4 grouped GEMMs support expert parallel degree 1 (got "
            f"{job_config.parallelism.expert_parallel_degree})",
        )
    converts_something = mx.enable_mxfp4_linear or mx.enable_mxfp4_gmm or mx.enable_mxfp4_fa
    tp = job_config.parallelism.tensor_parallel_degree
    # AdaHOPLinear takes TP's DTensors (adahop.linear._apply_sharded); the grouped experts, the attention core and
    # the quant-error probe take plain tensors only
    tp_refused = [
        key
        for key, on in (
            ("enable_mxfp4_gmm", mx.enable_mxfp4_gmm),
            ("enable_mxfp4_fa", mx.enable_mxfp4_fa),
            ("quant_error_freq", int(mx.quant_error_freq) > 0),
        )
        if on
    ]
    if converts_something and tp > 1 and tp_refused:
        raise ConfigError(
            "parallelism.tensor_parallel_degree",
            tp,
            f"1 while quantize.linear.mx.{tp_refused[0]} is on",
            "tensor parallelism works with the AdaHOP linears only "
            "(docs/training.md, 'Tensor and sequence parallelism'): set "
            + ", ".join(f"quantize.linear.mx.{k} = {'0' if k == 'quant_error_freq' else 'false'}" for k in tp_refused)
            + ", or use data parallelism (parallelism.data_parallel_shard_degree)",
        )
    if int(mx.outlier_k) < 0:
        raise ConfigError(f"{_P}.outlier_k", mx.outlier_k, "an integer >= 0")
    from adahop.backend import TILE_B_CHOICES

    if mx.kernels.tile_b not in TILE_B_CHOICES:
        raise ConfigError(f"{_P}.kernels.tile_b", mx.kernels.tile_b, " | ".join(map(repr, TILE_B_CHOICES)))
    report = mx.kernels.deficient_report
    if report:
        folder = os.path.dirname(os.path.abspath(report))
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise ConfigError(
                f"{_P}.kernels.deficient_report",
                report,
                "a path prefix in a writable folder",
                f"the folder {folder} does not exist or cannot be written: create it, or pick another "
                "prefix (the report is written there when training ends)",
            )
    if mx.kernels.exactness_check not in EXACTNESS_CHECKS:
        raise ConfigError(
            f"{_P}.kernels.exactness_check", mx.kernels.exactness_check, " | ".join(map(repr, EXACTNESS_CHECKS))
        )
    defaults = Attention()
    if not mx.enable_mxfp4_fa and mx.attention != defaults:
        changed = next(k for k, v in vars(mx.attention).items() if v != getattr(defaults, k))
        raise ConfigError(
            f"{_P}.attention.{changed}",
            str(getattr(mx.attention, changed)).lower(),
            f"its default, {str(getattr(defaults, changed)).lower()}, while {_P}.enable_mxfp4_fa is false",
            f"the setting would be ignored: set {_P}.enable_mxfp4_fa = true, or leave {_P}.attention out",
        )
    from adahop.hadamard import HADAMARD_SIZES_TEXT, check_hadamard_size

    try:
        check_hadamard_size(mx.hadamard_size)  # the layers' own check: both accept the same sizes
    except ValueError:
        raise ConfigError(f"{_P}.hadamard_size", mx.hadamard_size, HADAMARD_SIZES_TEXT) from None
    if int(mx.quant_error_freq) < 0:
        raise ConfigError(f"{_P}.quant_error_freq", mx.quant_error_freq, "0 (off) or a positive integer")
    if int(mx.quant_error_tokens) < 1:
        raise ConfigError(f"{_P}.quant_error_tokens", mx.quant_error_tokens, "a positive integer")
    cal = mx.calibration
    table = cal.layer_transform_config or {}
    if not isinstance(table, dict):
        raise ConfigError(f"{_C}.layer_transform_config", table, "a table of pair key -> mode")
    for key, mode in table.items():
        if key not in PAIR_KEYS:
            raise ConfigError(
                f"{_C}.layer_transform_config",
                key,
                "pair keys " + ", ".join(PAIR_KEYS),
                "unknown pair key",
            )
        if mode not in MODES:
            raise ConfigError(
                f'{_C}.layer_transform_config."{key}"',
                mode,
                "modes " + ", ".join(MODES),
                "unknown mode",
            )
    if cal.use_HT_calibration and not cal.plan_file:
        steps = int(cal.calibration_steps)
        if steps < 1:
            raise ConfigError(f"{_C}.calibration_steps", steps, "an integer >= 1")
        if steps > int(job_config.training.steps):
            raise ConfigError(
                f"{_C}.calibration_steps",
                steps,
                f"at most training.steps = {job_config.training.steps}",
            )
    if cal.pattern_threshold is not None and not float(cal.pattern_threshold) > 0:
        raise ConfigError(f"{_C}.pattern_threshold", cal.pattern_threshold, "a positive number or unset")
    if int(cal.max_observed_rows) < 0:
        raise ConfigError(f"{_C}.max_observed_rows", cal.max_observed_rows, "0 (all) or a positive integer")
    if cal.visualization_max_pixels < 1:
        raise ConfigError(f"{_C}.visualization_max_pixels", cal.visualization_max_pixels, "a positive integer")
    if cal.plan_file:
        if not os.path.isfile(cal.plan_file):
            raise ConfigError(f"{_C}.plan_file", cal.plan_file, "the path of an existing adahop_plan.json")


def validate_model(job_config) -> None:
    """Build the model on the meta device (no memory, no weights) and check the layers to convert."""
    mx = mx_config(job_config) if converter_enabled(job_config) else None
    if mx is None or not (mx.enable_mxfp4_linear or mx.enable_mxfp4_gmm or mx.enable_mxfp4_fa):
        return
    import torch
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job_config.model.name)
    if job_config.model.flavor not in spec.model_args:
        raise ConfigError(
            "model.flavor",
            job_config.model.flavor,
            f"flavors of {job_config.model.name}: " + ", ".join(spec.model_args),
        )
    args = dataclasses.replace(spec.model_args[job_config.model.flavor])
    args.update_from_config(job_config)
    with torch.device("meta"):
        model = spec.model_cls(args)
    from adahop.converter import check_hadamard_dims, check_tp_dims, select_targets

    select_targets(model, mx)
    check_hadamard_dims(model, mx)
    check_tp_dims(model, mx, int(job_config.parallelism.tensor_parallel_degree))


# upstream keys whose values below the minimum pass torchtitan's parsing and fail (or train nothing)
# later: key -> (minimum, the bool key that must be on for it to matter, or None)
_UPSTREAM_MINIMUM = {
    "training.steps": (1, None),
    "training.local_batch_size": (1, None),
    "training.seq_len": (1, None),
    "metrics.log_freq": (1, None),  # step % log_freq
    "validation.freq": (1, "validation.enable"),
    "validation.local_batch_size": (1, "validation.enable"),
    "validation.seq_len": (1, "validation.enable"),
    "checkpoint.interval": (1, "checkpoint.enable"),  # step % interval
    "parallelism.data_parallel_replicate_degree": (1, None),
    "parallelism.tensor_parallel_degree": (1, None),
    "parallelism.pipeline_parallel_degree": (1, None),
    "parallelism.context_parallel_degree": (1, None),
    "parallelism.expert_parallel_degree": (1, None),
    "parallelism.expert_tensor_parallel_degree": (1, None),
}


def _get(job_config, key: str):
    for name in key.split("."):
        job_config = getattr(job_config, name)
    return job_config


#: dataloader worker processes local text data takes: torchtitan's HuggingFaceTextDataset does not split a map-style
#: dataset's samples between workers, so each of N workers would yield every batch (N copies of the data, silently)
MAX_DATALOADER_WORKERS = 1


def validate_upstream_values(job_config, evaluating: bool = False) -> None:
    """Range checks of torchtitan's own keys (their types are checked by check_config_types). `evaluating`: for
    the tools that read a run's config to evaluate its checkpoints (adahop.checkpoint_io.load_job_config), which
    use the [validation] keys whether or not the run validated."""
    for key, (minimum, when) in _UPSTREAM_MINIMUM.items():
        value = _get(job_config, key)
        needed = when is None or _get(job_config, when) or (evaluating and when == "validation.enable")
        if value < minimum and needed:
            raise ConfigError(key, value, f"an integer >= {minimum}")
    shard = job_config.parallelism.data_parallel_shard_degree
    if shard != -1 and shard < 1:
        raise ConfigError(
            "parallelism.data_parallel_shard_degree", shard, "-1 (the ranks left over) or an integer >= 1"
        )
    max_norm = job_config.training.max_norm
    if not (math.isfinite(max_norm) and max_norm > 0):
        # torch's clip_grad_norm_ would scale every gradient by max_norm / norm: by a negative or NaN factor
        raise ConfigError("training.max_norm", max_norm, "a finite number > 0 (the gradient norm clipped to)")
    workers = job_config.training.dataloader.num_workers
    if workers < 0:
        raise ConfigError("training.dataloader.num_workers", workers, "an integer >= 0 (0: load in the main process)")


def _hub_name(path: str) -> bool:
    """Whether a dataset_path that is not on disk reads as a Hugging Face hub dataset ("allenai/c4", "wikitext"):
    relative, at most one "/", no file suffix; an absolute, home, ./ or ../ path or a file name is a local path."""
    import re

    if os.path.exists(path.split("/")[0]):  # "data/corpuss": a typo of a local path, not a hub owner "data"
        return False
    return re.fullmatch(r"\w[\w.-]*(/\w[\w.-]*)?", path) is not None and not re.search(
        r"\.(jsonl?|parquet|txt|csv|arrow)(\.gz)?$", path
    )


def check_dataset(job_config, section: str) -> None:
    """ConfigError unless `<section>.dataset` ("training" or "validation") names a registered text dataset, in any
    case (torchtitan lower-cases the name)."""
    from adahop.data.datasets import registered_datasets

    name = getattr(job_config, section).dataset
    if name.lower() not in registered_datasets():
        raise ConfigError(
            f"{section}.dataset",
            name,
            "a registered dataset: " + ", ".join(registered_datasets()),
            "register another with adahop.data.register_local_dataset (docs/data.md)",
        )


def validate_data_files(job_config) -> None:
    """The local data files and tokenizer files of the run: not empty, text where text is expected."""
    from adahop.data.datasets import data_file_problem, local_data_files
    from adahop.data.tokenizer import tokenizer_file_problem

    sections = ["training"] + (["validation"] if job_config.validation.enable else [])
    for section in sections:
        check_dataset(job_config, section)
        cfg = getattr(job_config, section)
        given = os.path.expanduser(cfg.dataset_path) if cfg.dataset_path else None
        if given and not os.path.exists(given) and not _hub_name(cfg.dataset_path):
            raise ConfigError(
                f"{section}.dataset_path",
                cfg.dataset_path,
                "an existing data file or folder, or a Hugging Face hub dataset name",
                f"no such file or folder (a relative path is read from {os.getcwd()})",
            )
        local = local_data_files(cfg.dataset, cfg.dataset_path)
        if given and os.path.isdir(given) and not local:
            raise ConfigError(
                f"{section}.dataset_path",
                cfg.dataset_path,
                "a data file, or a folder holding .jsonl / .json / .parquet / .txt / .csv files",
                "the folder holds none",
            )
        if section == "training" and local and job_config.training.dataloader.num_workers > MAX_DATALOADER_WORKERS:
            raise ConfigError(
                "training.dataloader.num_workers",
                job_config.training.dataloader.num_workers,
                f"0 or {MAX_DATALOADER_WORKERS} for local data",
                "local data is read map-style and not split between dataloader workers: with more, each worker "
                "would yield every batch again (1 worker already tokenizes a batch ahead of the step; a streamed "
                "hub dataset splits its shards between workers)",
            )
        for path in local:
            problem = data_file_problem(path)
            if problem:
                key = f"{section}.dataset_path" if cfg.dataset_path else f"{section}.dataset"
                raise ConfigError(
                    key,
                    str(path),
                    "a data file with at least one sample (UTF-8 text for .txt / .json / .jsonl / .csv)",
                    f"{path}: {problem}",
                )
    assets = job_config.model.hf_assets_path
    allowed = "a folder holding tokenizer.json (or vocab.json / vocab.txt), e.g. adahop/data/assets/tokenizer"
    if not assets or not os.path.isdir(assets):
        raise ConfigError("model.hf_assets_path", assets, allowed, "no such folder")
    if not any(os.path.isfile(os.path.join(assets, f)) for f in ("tokenizer.json", "vocab.json", "vocab.txt")):
        raise ConfigError("model.hf_assets_path", assets, allowed, "the folder holds none of them")
    found = tokenizer_file_problem(job_config.model.hf_assets_path)
    if found:
        path, problem = found
        raise ConfigError(
            "model.hf_assets_path",
            job_config.model.hf_assets_path,
            "a tokenizer folder whose tokenizer files are valid JSON",
            f"{path}: {problem}",
        )


def check_config_file(args: list[str]) -> None:
    """Load the TOML named by --job.config_file in `args` (if any) and check its keys and value types
    against the JobConfig torchtitan will build from it, before torchtitan reads it (a missing file, a
    TOML syntax error, an unknown key or a wrong type is a ConfigError)."""
    from adahop.config_types import check_toml_values, tomllib

    path = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--job.config_file", "--job.config-file"):
            path = value if eq else (args[i + 1] if i + 1 < len(args) else None)
            break
    if path is None:
        check_cli_keys(args, _config_class(args, {}))
        return
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as e:
        raise ConfigError("job.config_file", path, "a readable TOML file", e.strerror or str(e)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("job.config_file", path, "a TOML file", f"not valid TOML: {e}") from None
    config_cls = _config_class(args, values)
    check_cli_keys(args, config_cls)
    check_toml_values(values, config_cls, where=f"(in {path})")


def _config_class(args: list[str], values: dict):
    """The JobConfig class torchtitan builds for `args` (with the custom config module they name)."""
    try:
        return _config_manager()._maybe_add_custom_config(args, values)
    except ImportError as e:
        raise ConfigError(
            "job.custom_config_module", e.name, "an importable module that defines JobConfig", str(e)
        ) from None


def check_cli_keys(args: list[str], config_cls) -> None:
    """ConfigError for a `--section.key` argument that names no key of the config, or whose value is not of the
    key's type (tyro would print a box instead of one line). Takes `--section.no-key` for a boolean and any key
    below a table-valued key (e.g. `layer_transform_config.col-col`); values of list and table keys are left
    to tyro."""
    consumed = set()  # indices of the words that are values of the key before them
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            if i not in consumed:
                raise ConfigError(
                    "command line",
                    arg,
                    "--section.key value pairs (a list as one comma-separated value: --compile.components model,loss)",
                    "a word that follows no key",
                )
            continue
        if "." not in arg.partition("=")[0]:
            section = arg[2:].partition("=")[0].replace("-", "_")
            if section in {f.name for f in dataclasses.fields(config_cls) if dataclasses.is_dataclass(f.type)}:
                raise ConfigError(section, arg, f"--{section}.<key> <value>", "a section is not a key")
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                consumed.add(i + 1)  # another tool's option (e.g. --preflight N): its value is its own
            continue
        name, eq, inline = arg[2:].partition("=")
        parts = name.split(".")
        cls, section = config_cls, []
        for j, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            key = part.replace("-", "_")
            last = j == len(parts) - 1
            f = fields.get(key)
            negated = f is None and last and key.startswith("no_") and key[3:] in fields
            if negated:
                f = fields[key[3:]]
            if f is None:
                where = f"[{'.'.join(section)}]" if section else "the sections"
                raise ConfigError(
                    name,
                    arg,
                    f"the keys of {where}: " + ", ".join(fields),
                    "an unknown command-line argument: check its spelling",
                )
            if not dataclasses.is_dataclass(f.type):
                following = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
                if last:  # a value key (a table key may have keys of its own below it)
                    _check_cli_value(".".join([*section, f.name]), f.type, inline if eq else following, negated)
                if following is not None and not eq and not (last and (f.type is bool)):
                    consumed.add(i + 1)
                break
            cls, section = f.type, [*section, key]


def _check_cli_value(key: str, tp, value: str | None, negated: bool) -> None:
    """ConfigError unless the command-line text `value` (None: no value follows) parses as annotation `tp`."""
    if tp is bool:
        if value is not None:
            raise ConfigError(
                key, value, f"a flag without a value: --{key} sets it, --{_negated(key)} clears it", "drop the value"
            )
        return
    if negated:
        raise ConfigError(key, f"--{_negated(key)}", f"--{key} <value>: only true/false keys have a --no- form")
    if value is None:
        raise ConfigError(key, f"--{key}", f"--{key} <value>", "no value follows the key")
    allowed, ok = _cli_parses(tp, value)
    if not ok:
        raise ConfigError(key, value, allowed)


def _negated(key: str) -> str:
    section, _, name = key.rpartition(".")
    name = "no-" + name.replace("_", "-")  # tyro's spelling (it takes no_name too)
    return f"{section}.{name}" if section else name


def _cli_parses(tp, value: str) -> tuple[str, bool]:
    """(what the key takes, whether `value` is such a value) for the scalar annotations; other annotations
    (lists, tables) pass."""
    origin, options = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, options)), value in map(str, options)
    if origin in (Union, types.UnionType):
        arms = [a for a in options if a is not type(None)]
        if type(None) in options and value == "None":
            return "", True
        if int in arms and float in arms:
            arms.remove(int)  # int | float: "a number"
        results = [_cli_parses(a, value) for a in arms]
        allowed = " or ".join(r[0] for r in results) + (" (or None)" if type(None) in options else "")
        return allowed, any(r[1] for r in results)
    for kind, noun in ((int, "an integer"), (float, "a number")):
        if tp is kind:
            try:
                kind(value)
            except ValueError:
                return noun, False
            return noun, True
    return "", True


@functools.cache
def _config_manager():
    from torchtitan.config.manager import ConfigManager

    return ConfigManager()  # one: each instance registers its tyro rules again, globally


def validate_job_config(job_config, *, check_model: bool = True) -> None:
    """All checks of a parsed config; raises ConfigError naming the key, the bad value and what is allowed."""
    from adahop.config_types import check_config_types

    check_config_types(job_config)  # TOML values reach the dataclasses unchecked (adahop.config_types)
    validate_upstream_values(job_config)
    validate_mx(job_config)
    validate_data_files(job_config)
    if check_model:
        validate_model(job_config)
