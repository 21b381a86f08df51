"""Config parsing (torchtitan ConfigManager + adahop.config) and validation messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import adahop.titan  # noqa: F401  (CPU shims + registrations before torchtitan is used)
from adahop.config import ConfigError, validate_job_config, validate_mx
from adahop.modes import MODES, PAIR_KEYS, SEED_TABLE

REPO = Path(__file__).resolve().parents[1]

# The seed README's TOML block, verbatim.
SEED_README_TOML = """
[model]
converters = ["quantize.linear.mx"]

[quantize.linear.mx]
filter_fqns = ["output", "router.gate"]
recipe_name = "mxfp4_1d1d"
enable_mxfp4_linear = true
enable_mxfp4_gmm = false
enable_mxfp4_fa = false
use_sr_grad = false
use_hadamard = true
use_randomized_hadamard = false

[quantize.linear.mx.calibration]
use_HT_calibration = true
calibration_steps = 30
visualize_outlier_patterns = false
visualization_save_folder = "./outlier_patterns"

[quantize.linear.mx.calibration.layer_transform_config]
"row-row" = "hadamard"
"row-none" = "inner_outlier_extract_left"
"row-col" = "inner_outlier_extract_right"
"col-row" = "hadamard"
"col-none" = "hadamard"
"col-col" = "full_precision"
"none-row" = "hadamard"
"none-none" = "hadamard"
"none-col" = "inner_outlier_extract_right"
"""


def parse(args: list[str]):
    from torchtitan.config import ConfigManager

    from adahop.train import with_custom_config_module

    return ConfigManager().parse_args(with_custom_config_module(args))


@pytest.fixture
def seed_config(tmp_path):
    p = tmp_path / "seed.toml"
    p.write_text(SEED_README_TOML)
    # the seed block names no tokenizer folder (torchtitan's default does not exist here): the embedded one
    tokenizer = str(REPO / "adahop" / "data" / "assets" / "tokenizer")
    args = ["--model.name", "adahop_llama3", "--model.flavor", "nano", "--model.hf_assets_path", tokenizer]
    return parse(["--job.config_file", str(p), *args])


def test_seed_readme_block_parses(seed_config):
    c = seed_config
    mx = c.quantize.linear.mx
    assert c.model.converters == ["quantize.linear.mx"]
    assert mx.filter_fqns == ["output", "router.gate"]
    assert mx.recipe_name == "mxfp4_1d1d"
    assert (mx.enable_mxfp4_linear, mx.enable_mxfp4_gmm, mx.enable_mxfp4_fa) == (True, False, False)
    assert (mx.use_sr_grad, mx.use_hadamard, mx.use_randomized_hadamard) == (False, True, False)
    cal = mx.calibration
    assert cal.use_HT_calibration is True and cal.calibration_steps == 30
    assert cal.visualize_outlier_patterns is False and cal.visualization_save_folder == "./outlier_patterns"
    assert cal.layer_transform_config == SEED_TABLE
    # our additions have their documented defaults
    assert (mx.outlier_k, mx.hadamard_size, mx.quant_error_freq) == (64, 32, 0)
    assert cal.plan_file == "" and cal.pattern_threshold is None
    validate_job_config(c)  # training.steps defaults to 10000 >= 30


def test_cli_overrides_keep_working(tmp_path):
    p = tmp_path / "seed.toml"
    p.write_text(SEED_README_TOML)
    c = parse(
        [
            "--job.config_file",
            str(p),
            "--quantize.linear.mx.calibration.layer_transform_config.col-col",
            "hadamard",
            "--quantize.linear.mx.calibration.calibration_steps",
            "7",
            "--quantize.linear.mx.outlier_k",
            "16",
            "--training.steps",
            "9",
        ]
    )
    mx = c.quantize.linear.mx
    assert mx.calibration.layer_transform_config["col-col"] == "hadamard"
    assert mx.calibration.layer_transform_config["row-none"] == "inner_outlier_extract_left"
    assert (mx.calibration.calibration_steps, mx.outlier_k, c.training.steps) == (7, 16, 9)


def test_custom_config_module_added_once():
    from adahop.train import with_custom_config_module

    assert with_custom_config_module(["--x", "1"])[-2:] == ["--job.custom_config_module", "adahop.config"]
    given = ["--job.custom_config_module=other.mod"]
    assert with_custom_config_module(given) == given


@pytest.mark.parametrize(
    "mutate, key, value, allowed",
    [
        (
            lambda mx, c: mx.calibration.layer_transform_config.__setitem__("row-row", "rotate"),
            'layer_transform_config."row-row"',
            "rotate",
            "hadamard",
        ),
        (
            lambda mx, c: mx.calibration.layer_transform_config.__setitem__("diag-row", "hadamard"),
            "layer_transform_config",
            "diag-row",
            "row-row",
        ),
        (lambda mx, c: setattr(mx, "recipe_name", "mxfp8_cublas"), "recipe_name", "mxfp8_cublas", "mxfp4_1d1d"),
        (
            lambda mx, c: setattr(mx.calibration, "calibration_steps", 31) or setattr(c.training, "steps", 30),
            "calibration_steps",
            "31",
            "training.steps = 30",
        ),
        (
            lambda mx, c: setattr(mx, "enable_mxfp4_gmm", True) or setattr(c.parallelism, "expert_parallel_degree", 2),
            "enable_mxfp4_gmm",
            "True",
            "expert_parallel_degree",
        ),
        (
            lambda mx, c: setattr(c.parallelism, "tensor_parallel_degree", 2) or setattr(mx, "enable_mxfp4_gmm", True),
            "parallelism.tensor_parallel_degree",
            "2",
            "1 while quantize.linear.mx.enable_mxfp4_gmm is on",
        ),
        (
            lambda mx, c: setattr(c.parallelism, "tensor_parallel_degree", 2) or setattr(mx, "enable_mxfp4_fa", True),
            "parallelism.tensor_parallel_degree",
            "2",
            "1 while quantize.linear.mx.enable_mxfp4_fa is on",
        ),
        (
            lambda mx, c: setattr(c.parallelism, "tensor_parallel_degree", 2) or setattr(mx, "quant_error_freq", 5),
            "parallelism.tensor_parallel_degree",
            "2",
            "1 while quantize.linear.mx.quant_error_freq is on",
        ),
        (
            lambda mx, c: setattr(mx.calibration, "visualization_max_pixels", -1),
            "calibration.visualization_max_pixels",
            "-1",
            "a positive integer",
        ),
    ],
    ids=[
        "unknown-mode",
        "unknown-pair-key",
        "recipe",
        "calibration-steps",
        "gmm-ep",
        "tensor-parallel-gmm",
        "tensor-parallel-fa",
        "tensor-parallel-qerr",
        "visualization-max-pixels",
    ],
)
def test_invalid_values_refused_with_key_value_allowed(seed_config, mutate, key, value, allowed):
    c = copy.deepcopy(seed_config)
    mutate(c.quantize.linear.mx, c)
    with pytest.raises(ConfigError) as e:
        validate_mx(c)
    msg = str(e.value)
    assert key in msg and value in msg and allowed in msg, msg
    assert isinstance(e.value, ValueError)


def test_tensor_parallel_allowed_for_linears_or_when_nothing_is_converted(seed_config):
    c = copy.deepcopy(seed_config)
    c.parallelism.tensor_parallel_degree = 2
    mx = c.quantize.linear.mx
    mx.enable_mxfp4_gmm = mx.enable_mxfp4_fa = False
    mx.quant_error_freq = 0
    validate_mx(c)  # the AdaHOP linears take TP's DTensors (tests/test_tensor_parallel.py)
    mx.enable_mxfp4_gmm = True
    c.model.converters = []  # the high-precision baseline: torchtitan's own tensor parallelism
    validate_mx(c)
    c.model.converters = ["quantize.linear.mx"]
    mx = c.quantize.linear.mx
    mx.enable_mxfp4_linear = mx.enable_mxfp4_gmm = mx.enable_mxfp4_fa = False
    validate_mx(c)


@pytest.mark.parametrize(
    "key, value, enable",
    [
        ("training.steps", -1, None),
        ("training.steps", 0, None),
        ("training.local_batch_size", 0, None),
        ("training.seq_len", 0, None),
        ("metrics.log_freq", 0, None),
        ("validation.freq", 0, "validation.enable"),
        ("checkpoint.interval", 0, "checkpoint.enable"),
    ],
)
def test_upstream_values_below_their_minimum_refused_up_front(seed_config, key, value, enable):
    c = copy.deepcopy(seed_config)
    section, name = key.split(".")
    setattr(getattr(c, section), name, value)
    c.quantize.linear.mx.calibration.use_HT_calibration = False  # (calibration_steps <= training.steps)
    if enable:  # only checked when it matters
        validate_job_config(c, check_model=False)
        getattr(c, section).enable = True
    with pytest.raises(ConfigError) as e:
        validate_job_config(c, check_model=False)
    assert e.value.key == key and f"{key} = {value}" in str(e.value) and "an integer >= 1" in str(e.value)


@pytest.mark.parametrize("workers", [2, 8])
def test_dataloader_workers_that_would_repeat_local_batches_are_refused(seed_config, workers):
    """torchtitan's text datasets give every dataloader worker all the samples of local (map-style) data: 2 workers
    would train on each batch twice. 0 and 1 are allowed; a streamed hub dataset splits its shards between
    workers, so more are allowed there."""
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.calibration.use_HT_calibration = False
    c.training.dataset = "adahop_text"  # the embedded corpus: local files
    for allowed in (0, 1):
        c.training.dataloader.num_workers = allowed
        validate_job_config(c, check_model=False)
    c.training.dataloader.num_workers = workers
    with pytest.raises(ConfigError) as e:
        validate_job_config(c, check_model=False)
    assert e.value.key == "training.dataloader.num_workers" and "allowed: 0 or 1 for local data" in str(e.value)
    assert "every batch again" in str(e.value)
    c.training.dataset = "c4"  # streamed from the hub (nothing is read here)
    validate_job_config(c, check_model=False)
    c.training.dataloader.num_workers = -1
    with pytest.raises(ConfigError, match=r"num_workers = -1; allowed: an integer >= 0"):
        validate_job_config(c, check_model=False)


def test_compile_of_the_loss_alone_is_allowed(seed_config):
    c = copy.deepcopy(seed_config)
    c.compile.enable, c.compile.components = True, ["loss"]
    validate_mx(c)


@pytest.mark.parametrize("gmm, fa", [(False, False), (True, True)], ids=["linears", "linears-gmm-attention"])
def test_compile_of_a_model_with_adahop_layers_is_allowed(seed_config, gmm, fa):
    """AdaHOP linears, MXFP4 grouped GEMMs and MXFP4 attention are custom ops: the model compiles whole."""
    c = copy.deepcopy(seed_config)
    c.compile.enable, c.compile.components = True, ["model", "loss"]
    c.quantize.linear.mx.enable_mxfp4_gmm, c.quantize.linear.mx.enable_mxfp4_fa = gmm, fa
    validate_mx(c)


@pytest.mark.parametrize("value", ["per_batch", "", "PER_STEP"])
def test_exactness_check_refused_outside_its_choices(seed_config, value):
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.kernels.exactness_check = value
    with pytest.raises(ConfigError, match=r"kernels\.exactness_check.*'per_step' \| 'per_gemm'"):
        validate_mx(c)


def test_unknown_mode_message_lists_all_modes(seed_config):
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.calibration.layer_transform_config["none-col"] = "bogus"
    with pytest.raises(ConfigError) as e:
        validate_mx(c)
    assert all(m in str(e.value) for m in MODES)


def test_unknown_pair_key_message_lists_all_keys(seed_config):
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.calibration.layer_transform_config["row_row"] = "hadamard"
    with pytest.raises(ConfigError) as e:
        validate_mx(c)
    assert all(k in str(e.value) for k in PAIR_KEYS)


def test_dims_not_multiple_of_32_names_fqn_shape_and_filter_fqns():
    import torch.nn as nn

    from adahop.converter import select_linears

    model = nn.Module()
    model.proj = nn.Linear(64, 64)
    model.head = nn.Module()
    model.head.out = nn.Linear(64, 100)
    with pytest.raises(ConfigError) as e:
        select_linears(model, [])
    msg = str(e.value)
    assert "head.out" in msg and "[100, 64]" in msg and "filter_fqns" in msg
    assert set(select_linears(model, ["head"])) == {"proj"}


def test_calibration_off_needs_no_steps_check(seed_config):
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.calibration.use_HT_calibration = False
    c.training.steps = 5
    validate_mx(c)


def test_all_shipped_configs_parse_and_validate():
    configs = sorted((REPO / "configs").glob("*.toml"))
    assert any(p.name == "default.toml" for p in configs)
    for p in configs:
        c = parse(["--job.config_file", str(p)])
        validate_job_config(c, check_model=True)  # builds the model on the meta device
        assert c.model.name in ("adahop_llama3", "adahop_qwen3"), p


def test_kernels_tile_b_is_typed_config_checked_before_training(seed_config):
    """[quantize.linear.mx.kernels] tile_b: a value outside TILE_B_CHOICES is refused by name before training;
    each allowed one reaches the converted layers' recipes, which pick the GEMMs it names."""
    from adahop.converter import AdaHOPConverter

    seed_config.quantize.linear.mx.kernels.tile_b = "1"
    with pytest.raises(ConfigError) as e:
        validate_job_config(seed_config, check_model=False)
    assert "quantize.linear.mx.kernels.tile_b" in str(e.value) and "'1'" in str(e.value) and "weights" in str(e.value)
    want = {
        "none": (False, False, False),
        "forward": (True, False, False),
        "weights": (True, True, False),
        "all": (True, True, True),
    }
    for choice, slots in want.items():
        seed_config.quantize.linear.mx.kernels.tile_b = choice
        validate_job_config(seed_config, check_model=False)
        kwargs = AdaHOPConverter(seed_config, None).layer_kwargs("layers.0.attention.wq")
        from adahop.linear import LinearRecipe

        recipe = LinearRecipe(**kwargs)
        assert tuple(recipe.tile_b_for(s) for s in ("forward_y", "backward_gx", "backward_gw")) == slots, choice


def test_deficient_report_needs_a_writable_folder(seed_config, tmp_path):
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.kernels.deficient_report = str(tmp_path / "missing" / "rep")
    with pytest.raises(ConfigError, match=r"kernels\.deficient_report.*does not exist or cannot be written"):
        validate_mx(c)
    c.quantize.linear.mx.kernels.deficient_report = str(tmp_path / "rep")
    validate_mx(c)


def test_attention_settings_without_mxfp4_attention_are_refused(seed_config):
    """[quantize.linear.mx.attention] changed while enable_mxfp4_fa is off would be ignored: refused by name."""
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.attention.quantize_dp = True
    with pytest.raises(ConfigError, match=r"attention\.quantize_dp = 'true'.*default, false, while .*enable_mxfp4_fa"):
        validate_mx(c)
    c.quantize.linear.mx.enable_mxfp4_fa = True
    validate_mx(c)


def test_attention_defaults_are_the_layers():
    """The config's defaults are the ones mxfp4_attention and MXFP4Attention take when called directly."""
    from adahop import attention
    from adahop.config import Attention

    assert (Attention().smooth_keys, Attention().quantize_dp) == (attention.SMOOTH_KEYS, attention.QUANTIZE_DP)


@pytest.mark.parametrize("key", ["use_sr_grad", "attention.smooth_keys", "attention.quantize_dp"])
@pytest.mark.parametrize("value", ["false", 1, None])
def test_attention_flags_must_be_booleans_on_every_entry_point(seed_config, key, value):
    """torchtitan's own entry point skips adahop.config_types: validate_mx itself refuses a non-bool (bool("false")
    would be True)."""
    c = copy.deepcopy(seed_config)
    c.quantize.linear.mx.enable_mxfp4_fa = True
    owner = c.quantize.linear.mx.attention if "." in key else c.quantize.linear.mx
    setattr(owner, key.split(".")[-1], value)
    with pytest.raises(ConfigError, match=rf"{key} = .*true or false"):
        validate_mx(c)
