"""adahop.checkpoint_io.load_job_config from a run's adahop_job.json: its values are type-checked like a TOML's,
naming the file; keys this version's config does not have are said, not silently dropped."""

from __future__ import annotations

import dataclasses
import json

import pytest
from train_helpers import REPO

import adahop.titan  # noqa: F401  (registrations before torchtitan's config is parsed)
from adahop.checkpoint_io import load_job_config
from adahop.config import ConfigError


def job_folder(tmp_path, edit=None):
    """A run folder holding adahop_job.json (as the trainer writes it) and a step folder under it."""
    config = load_job_config(None, ["--job.config_file", str(REPO / "configs" / "default.toml")])
    job = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    if edit:
        edit(job)
    (tmp_path / "adahop_job.json").write_text(json.dumps(job))
    step = tmp_path / "checkpoint" / "step-3"
    step.mkdir(parents=True)
    return step


def test_the_job_file_gives_back_the_run_config(tmp_path):
    config = load_job_config(job_folder(tmp_path), [])
    assert config.training.steps == 150 and config.model.flavor == "tiny"
    assert config.quantize.linear.mx.calibration.calibration_steps == 10


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("training.steps", "150", "an integer"),
        ("quantize.linear.mx.use_hadamard", "false", "true or false"),
        ("quantize.linear.mx.filter_fqns", "output", "a list of strings"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_file(tmp_path, key, value, allowed):
    def edit(job):
        *path, name = key.split(".")
        section = job
        for part in path:
            section = section[part]
        section[name] = value

    step = job_folder(tmp_path, edit)
    with pytest.raises(ConfigError) as e:
        load_job_config(step, [])
    message = str(e.value)
    assert e.value.key == key and allowed in message and str(tmp_path / "adahop_job.json") in message


def test_keys_of_another_version_are_said_not_dropped_silently(tmp_path, capsys):
    def edit(job):
        job["training"]["retired_knob"] = 3
        job["old_section"] = {"x": 1}

    config = load_job_config(job_folder(tmp_path, edit), [])
    assert config.training.steps == 150
    err = capsys.readouterr().err
    assert "not keys of this version's config, not used: training.retired_knob, old_section" in err, err


def test_a_command_line_override_wins_over_the_job_file(tmp_path):
    config = load_job_config(job_folder(tmp_path), ["--training.steps", "7"])
    assert config.training.steps == 7


@pytest.mark.parametrize(
    "where, key, value",
    [
        ("job file", "validation.seq_len", -5),
        ("job file", "validation.local_batch_size", 0),
        ("command line", "validation.seq_len", -5),
        ("command line", "validation.steps_unused", None),  # an unknown key: one message, before tyro
        ("command line", "validation.local_batch_size", "two"),  # a wrong type: one message, before tyro
    ],
)
def test_values_the_tools_use_are_range_checked(tmp_path, where, key, value):
    """eval / export / sweep read [validation] whether or not the run validated: out-of-range values are refused
    by name before anything is built, from the job file and from the command line alike."""
    section, name = key.split(".")

    def edit(job):
        job["validation"]["enable"] = False  # the run did not validate: its [validation] was never checked
        if where == "job file":
            job[section][name] = value

    step = job_folder(tmp_path, edit)
    args = [] if where == "job file" else [f"--{key}", str(value)] if value is not None else [f"--{key}"]
    with pytest.raises(ConfigError) as e:
        load_job_config(step, args)
    assert key in str(e.value), str(e.value)
