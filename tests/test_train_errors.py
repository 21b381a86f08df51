"""`python -m adahop.train` on bad input: one line on stderr, exit code 2, no traceback (adahop.cli)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import REPO, base_toml, command, env


def run(config, args=()) -> subprocess.CompletedProcess:
    return subprocess.run(command(config, list(args)), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def test_missing_config_file_is_one_message(tmp_path):
    missing = tmp_path / "nope.toml"
    r = run(missing)
    assert error_lines(r) == [
        f"error: invalid config: job.config_file = '{missing}'; allowed: a readable TOML file. "
        "No such file or directory"
    ], r.stderr
    assert r.stderr.count(str(missing)) == 1  # torchtitan logged it and raised it again: printed twice


def test_config_error_in_the_trainer_is_one_message(tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(tmp_path / "out", steps=4, calibration_steps=2))
    r = run(config, ["--quantize.linear.mx.calibration.visualization_max_pixels", "-1"])
    lines = error_lines(r)
    assert len(lines) == 1 and "quantize.linear.mx.calibration.visualization_max_pixels = -1" in lines[0], r.stderr
    assert "Building adahop_llama3" not in r.stdout + r.stderr  # refused before the model is built


@pytest.mark.parametrize(
    "name",
    [
        "ADAHOP_TILE_B",
        "ADAHOP_SYNC_EVERY_GEMM",
        "ADAHOP_DEFICIENT_REPORT",
        "ADAHOP_DUAL_QUANT",
        "ADAHOP_SIDE_STREAM",
        "ADAHOP_FORCE_REFERENCE",
    ],
)
def test_removed_environment_switches_refused_naming_the_replacement(name):
    from adahop.cli import REMOVED_SWITCHES, check_removed_switches
    from adahop.config import ConfigError

    with pytest.raises(ConfigError) as e:
        check_removed_switches({name: "1"})
    assert name in str(e.value) and REMOVED_SWITCHES[name].split()[0] in str(e.value)
    check_removed_switches({"ADAHOP_OTHER": "1"})  # a name that was never a switch passes


@pytest.mark.parametrize(
    "args, key, says",
    [
        (["--training.dataset_path", "/nonexistent/corpus.jsonl"], "training.dataset_path", "no such file or folder"),
        (["--model.hf_assets_path", "/nonexistent/tokenizer"], "model.hf_assets_path", "no such folder"),
    ],
    ids=["dataset_path", "hf_assets_path"],
)
def test_missing_data_and_tokenizer_paths_are_one_message(tmp_path, args, key, says):
    """A path that does not exist is refused by name before anything is built (it failed in the data loader or
    the tokenizer, under a traceback)."""
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(tmp_path / "out", steps=4, calibration_steps=2))
    lines = error_lines(run(config, args))
    assert len(lines) == 1 and f"invalid config: {key} = '{args[1]}'" in lines[0] and says in lines[0], lines


def test_a_load_step_that_was_not_saved_is_one_message_listing_the_saved_ones(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint" / "step-4").mkdir(parents=True)  # what a run saved (the check reads the folder names)
    (out / "checkpoint" / "step-8").mkdir()
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(out, steps=12, calibration_steps=2))
    lines = error_lines(run(config, ["--checkpoint.enable", "--checkpoint.load_step", "6"]))
    assert lines == [
        f"error: invalid config: checkpoint.load_step = 6; allowed: a step saved in {out / 'checkpoint'}: 4, 8. "
        "leave --checkpoint.load_step out to resume the latest one"
    ], lines


def test_run_train_checks_the_config_once_before_torchrun_starts_ranks(tmp_path):
    """run_train.sh's preflight: a config error is the trainer's one line, with no torchrun failure report."""
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(tmp_path / "out", steps=4, calibration_steps=2))
    r = subprocess.run(
        ["./run_train.sh", "--quantize.linear.mx.calibration.visualization_max_pixels", "-1"],
        cwd=REPO,
        env={**env(), "CONFIG_FILE": str(config), "NGPU": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = error_lines(r)
    assert len(lines) == 1 and "visualization_max_pixels = -1" in lines[0], r.stderr
    assert "ChildFailedError" not in r.stderr and "[rank" not in r.stdout + r.stderr  # no rank was started


def test_preflight_needs_a_world_size():
    r = subprocess.run(
        [sys.executable, "-m", "adahop.train", "--preflight", "two"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert error_lines(r) == [
        "error: --preflight takes the world size (a whole number >= 1) first, then the run's arguments"
    ], r.stderr


@pytest.mark.parametrize(
    "setup, args, key, says",
    [
        (
            None,
            ["--checkpoint.no-enable", "--checkpoint.load_step", "3"],
            "checkpoint.load_step",
            "add --checkpoint.enable",
        ),
        (
            None,
            ["--checkpoint.enable", "--checkpoint.load_step", "3"],
            "checkpoint.load_step",
            "does not exist: is job.dump_folder",
        ),
        (
            None,
            ["--checkpoint.enable", "--checkpoint.load_step", "3", "--checkpoint.initial_load_path", "{tmp}"],
            "checkpoint.load_step",
            "give one of the two",
        ),
        (
            None,
            ["--checkpoint.enable", "--checkpoint.initial_load_path", "{tmp}/nope/step-9"],
            "checkpoint.initial_load_path",
            "no such folder",
        ),
        (
            "empty_step",
            ["--checkpoint.enable", "--checkpoint.load_step", "7"],
            "checkpoint.load_step",
            "an interrupted save?",
        ),
        ("empty_dir", ["--training.dataset_path", "{tmp}/empty"], "training.dataset_path", "the folder holds none"),
        (None, ["--training.dataset_path", "data/no_such_corpus"], "training.dataset_path", "no such file or folder"),
        (
            "empty_dir",
            ["--model.hf_assets_path", "{tmp}/empty"],
            "model.hf_assets_path",
            "the folder holds none of them",
        ),
    ],
    ids=[
        "load_step-no-checkpointing",
        "load_step-fresh-folder",
        "load_step-and-initial_load_path",
        "initial_load_path-missing",
        "load_step-empty-step",
        "dataset_path-no-data-files",
        "dataset_path-local-typo",
        "hf_assets_path-no-tokenizer",
    ],
)
def test_load_and_path_settings_that_would_be_ignored_or_fail_late_are_one_message(tmp_path, setup, args, key, says):
    """Settings torchtitan would ignore without a word (a load_step with nothing to load it from) or fail on under
    a traceback (an empty step folder, a data folder without data, a tokenizer folder without a tokenizer)."""
    out = tmp_path / "out"
    if setup == "empty_step":
        (out / "checkpoint" / "step-7").mkdir(parents=True)
    if setup == "empty_dir":
        (tmp_path / "empty").mkdir()
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(out, steps=4, calibration_steps=2))
    lines = error_lines(run(config, [a.replace("{tmp}", str(tmp_path)) for a in args]))
    assert len(lines) == 1 and f"invalid config: {key} = " in lines[0] and says in lines[0], lines


def test_run_train_refuses_a_second_config_file():
    """run_train.sh passes CONFIG_FILE as --job.config_file itself, and the first one given wins: a second one in the
    arguments would be ignored without a word."""
    r = subprocess.run(
        ["./run_train.sh", "--job.config_file", "configs/llama1b_bf16.toml"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "run CONFIG_FILE=<toml> ./run_train.sh" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "arg, key, section",
    [("--training.stepz", "training.stepz", "[training]"), ("--trainin.steps", "trainin.steps", "the sections")],
)
def test_a_misspelled_command_line_key_is_one_message_listing_the_keys(tmp_path, arg, key, section):
    """tyro prints a box of suggestions for an unknown argument; the check before it says it in one line."""
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(tmp_path / "out", steps=4, calibration_steps=2))
    lines = error_lines(run(config, [arg, "3", "--checkpoint.no-enable", "--model.no-print-after-conversion"]))
    assert len(lines) == 1 and f"invalid config: {key} = '{arg}'; allowed: the keys of {section}: " in lines[0], lines
    assert "check its spelling" in lines[0]


def test_a_command_line_value_of_the_wrong_type_is_one_message(tmp_path):
    """tyro prints a box for `--training.steps abc`; the check before it says it in one line."""
    config = tmp_path / "ok.toml"
    config.write_text(base_toml(tmp_path / "out", steps=4, calibration_steps=2))
    lines = error_lines(run(config, ["--training.steps", "abc", "--checkpoint.no-enable"]))
    assert len(lines) == 1 and "invalid config: training.steps = 'abc'; allowed: an integer" in lines[0], lines


@pytest.mark.parametrize(
    "args, message",
    [
        (["--training.steps", "abc"], "training.steps = 'abc'; allowed: an integer"),
        (["--training.steps=1.5"], "training.steps = '1.5'; allowed: an integer"),
        (["--training.steps"], "no value follows the key"),
        (["--training.steps", "--compile.enable"], "no value follows the key"),
        (["--compile.components", "model", "loss"], "'loss'; allowed: --section.key value pairs"),
        (["--training.steps", "5", "extra"], "'extra'; allowed: --section.key value pairs"),
        (["--training"], "training = '--training'; allowed: --training.<key> <value>. a section is not a key"),
        (["--training.max_norm", "x1"], "training.max_norm = 'x1'; allowed: a number"),
        (["--compile.enable", "yes"], "--compile.enable sets it, --compile.no-enable clears it"),
        (["--compile.enable=true"], "a flag without a value"),
        (["--training.no-steps"], "only true/false keys have a --no- form"),
        (["--lr_scheduler.decay_type", "foo"], "allowed: one of linear, sqrt, cosine"),
    ],
)
def test_command_line_values_are_checked_against_their_key_types(args, message):
    from adahop.config import ConfigError, check_cli_keys, check_config_file

    argv = ["--job.custom_config_module", "adahop.config", *args]
    with pytest.raises(ConfigError) as e:
        check_config_file(argv)
    assert message in str(e.value), str(e.value)
    # and what is right passes: the same keys with values of their types
    check_cli_keys(
        [
            "--training.steps",
            "12",
            "--training.max_norm",
            "-1e-3",
            "--compile.enable",
            "--compile.no-enable",
            "--quantize.linear.mx.kernels.tile_b",
            "weights",
            "--compile.components",
            "model,loss",
            "--quantize.linear.mx.calibration.layer_transform_config.col-col",
            "hadamard",
        ],
        _job_config_class(),
    )


def _job_config_class():
    from adahop.config import _config_class

    return _config_class(["--job.custom_config_module", "adahop.config"], {})


@pytest.mark.parametrize("tool", ["adahop.eval", "adahop.export_hf", "adahop.patterns_cli", "adahop.sweep.__main__"])
def test_every_tool_refuses_a_removed_switch(tool, monkeypatch, capsys):
    """Not only the trainer: a tool that went on without the switch would run other numerics than asked."""
    import importlib

    monkeypatch.setenv("ADAHOP_FORCE_REFERENCE", "1")
    assert importlib.import_module(tool).main(["--help"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ADAHOP_FORCE_REFERENCE" in err[0] and "reference_only" in err[0], err


@pytest.mark.parametrize(
    "args, key",
    [
        (["--parallelism.data_parallel_shard_degree=-2"], "parallelism.data_parallel_shard_degree"),
        (["--parallelism.data_parallel_shard_degree", "0"], "parallelism.data_parallel_shard_degree"),
        (["--parallelism.tensor_parallel_degree", "0"], "parallelism.tensor_parallel_degree"),
        (["--training.max_norm", "nan"], "training.max_norm"),
        (["--training.max_norm", "inf"], "training.max_norm"),
        (["--training.max_norm", "-1"], "training.max_norm"),  # clip_grad_norm_ would flip every gradient's sign
    ],
)
def test_degrees_and_max_norm_out_of_range_are_refused_by_name(args, key):
    from adahop.config import ConfigError, validate_upstream_values
    from adahop.titan import setup

    setup()
    from torchtitan.config import ConfigManager

    config = ConfigManager().parse_args(["--job.custom_config_module", "adahop.config", *args])
    with pytest.raises(ConfigError) as e:
        validate_upstream_values(config)
    assert e.value.key == key, str(e.value)
