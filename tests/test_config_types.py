"""Every TOML value is type-checked against its JobConfig field (torchtitan's and adahop's), before
anything is built: torchtitan hands TOML values to the dataclasses unchecked (tyro only warns)."""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from typing import Literal, get_origin

import pytest

import adahop.titan  # noqa: F401  (registrations before torchtitan is used)
from adahop import config as adahop_config
from adahop.config import ConfigError, check_config_file, validate_job_config
from adahop.config_types import check_config_types, matches

# wrong values per field annotation (its repr), Literal fields aside: each is refused for that type
WRONG = {
    "<class 'bool'>": ["false", 1],
    "<class 'int'>": [2.7, True, "4"],
    "<class 'float'>": ["1.0", True],
    "<class 'str'>": [5, ["output"]],
    "list[str]": ["output", [1]],
    "dict[str, str]": ["x", {"row-row": 1}],
    "str | None": [5, ["a"]],
    "int | None": [2.5, "4", True],
    "float | None": ["0.5", True],
    "typing.Optional[float]": ["0.5", True],
    "float | int": ["1.0", True],
    "list[list[str]] | None": ["x", ["x"]],
    "list[str] | str": [5, [1]],
}
WRONG_LITERAL = ["not-a-choice", 1]
# torchtitan copies the deprecated experimental.custom_args_module into job.custom_config_module
ALIASES = {"experimental.custom_args_module": "job.custom_config_module"}
CLI_KEYS = ("job.config_file", "job.custom_config_module")  # given on the command line, which wins


def merged_config_cls():
    from torchtitan.config.job_config import JobConfig
    from torchtitan.config.manager import ConfigManager

    return ConfigManager._merge_configs(JobConfig, adahop_config.JobConfig)


def leaf_fields(cls, prefix: str = ""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            yield from leaf_fields(f.type, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.type


LEAVES = list(leaf_fields(merged_config_cls()))


def wrong_values(tp) -> list:
    if get_origin(tp) is Literal or "Literal[" in repr(tp):
        return WRONG_LITERAL
    return WRONG[repr(tp)]


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_literal, value)) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_literal(v)}" for k, v in value.items()) + " }"


def write_toml(tmp_path, key: str, value):
    section, _, name = key.rpartition(".")
    p = tmp_path / "job.toml"
    p.write_text(f"[{section}]\n{name} = {toml_literal(value)}\n")
    return p


def args_for(path) -> list[str]:
    return ["--job.config_file", str(path), "--job.custom_config_module", "adahop.config"]


@functools.cache
def config_manager():
    from torchtitan.config.manager import ConfigManager

    return ConfigManager()  # one: each instance registers its tyro rules again (and parsing slows down)


def parse(args: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tyro's "default value has type ..." warnings
        return config_manager().parse_args(args)


def test_every_field_type_has_wrong_values():
    missing = {repr(tp) for _, tp in LEAVES if not (get_origin(tp) is Literal or "Literal[" in repr(tp))} - set(WRONG)
    assert not missing, f"add wrong values for these field types to WRONG: {missing}"
    assert len(LEAVES) > 150 and any(k == "quantize.linear.mx.calibration.use_HT_calibration" for k, _ in LEAVES)


def parsed_with(key: str, value, args: list[str]):
    """The merged config torchtitan parses from `args` (a TOML setting `key` to `value`), or where
    torchtitan's own parsing trips over the value (e.g. a list for model.hf_assets_path), the default
    config holding that value, as the dataclass would."""
    try:
        return parse(args)
    except Exception:
        config = parse(["--job.custom_config_module", "adahop.config"])
        *path, name = key.split(".")
        section = config
        for part in path:
            section = getattr(section, part)
        setattr(section, name, value)
        return config


@pytest.mark.parametrize("key, tp", LEAVES, ids=[k for k, _ in LEAVES])
def test_wrong_type_refused_before_the_model_is_built(tmp_path, monkeypatch, key, tp):
    def model_built(job_config):
        raise AssertionError("the model was built before the type check")

    monkeypatch.setattr(adahop_config, "validate_model", model_built)
    for value in wrong_values(tp):
        # adahop.train checks the file before torchtitan reads it
        with pytest.raises(ConfigError) as e:
            check_config_file(args_for(write_toml(tmp_path, key, value)))
        assert e.value.key == key and e.value.value == value, str(e.value)
        assert f"invalid config: {key} = {value!r}" in str(e.value) and "allowed: " in str(e.value)
    if key in CLI_KEYS:
        return
    # and the parsed, merged config (what AdaHOPTrainer validates) is checked too
    value = wrong_values(tp)[0]
    config = parsed_with(key, value, args_for(write_toml(tmp_path, key, value)))
    with pytest.raises(ConfigError) as e:
        validate_job_config(config, check_model=True)
    assert e.value.key == ALIASES.get(key, key) and e.value.value == value, str(e.value)


ISSUE_CASES = [  # issue 20 item 3, as written in a TOML
    ("quantize.linear.mx.calibration.use_HT_calibration", "false", "true or false", "write false without quotes"),
    ("quantize.linear.mx.use_hadamard", "false", "true or false", "write false without quotes"),
    ("quantize.linear.mx.filter_fqns", "output", "a list of strings", 'filter_fqns = ["output"]'),
    ("quantize.linear.mx.calibration.calibration_steps", 2.7, "an integer", ""),
    ("quantize.linear.mx.calibration.calibration_steps", "ten", "an integer", ""),
    ("training.steps", "4", "an integer", "write 4 without quotes"),
]


@pytest.mark.parametrize("key, value, allowed, hint", ISSUE_CASES)
def test_issue_cases_name_key_value_type_and_file(tmp_path, key, value, allowed, hint):
    path = write_toml(tmp_path, key, value)
    with pytest.raises(ConfigError) as e:
        check_config_file(args_for(path))
    msg = str(e.value)
    assert f"{key} = {value!r}" in msg and allowed in msg and hint in msg and str(path) in msg, msg


def test_right_types_pass(tmp_path):
    """No false alarm: the defaults, an int for a float, None where allowed, the shipped configs."""
    from pathlib import Path

    check_config_types(merged_config_cls()())
    p = tmp_path / "ok.toml"
    p.write_text(
        '[optimizer]\nlr = 1\n[training]\nmax_norm = 2\n[quantize.grouped_mm.mx]\nfqns = "experts"\n'
        '[quantize.linear.mx.calibration.layer_transform_config]\n"col-col" = "hadamard"\n'
    )
    check_config_file(args_for(p))
    from adahop.data import TOKENIZER_DIR

    validate_job_config(parse([*args_for(p), "--model.hf_assets_path", str(TOKENIZER_DIR)]), check_model=False)
    for shipped in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        check_config_file(args_for(shipped))


def test_bool_is_no_int_and_int_is_a_float():
    assert not matches(True, int) and matches(3, float) and not matches(True, float)
    assert matches(None, float | None) and not matches(None, float)
    assert matches([["a"]], list[list[str]] | None) and not matches(["a"], list[list[str]] | None)
    assert matches("fused", Literal["fused", "foreach"]) and not matches("x", Literal["fused"])


@pytest.mark.parametrize(
    "text, key, expect",
    [
        ("[training]\nstepz = 4\n", "training.stepz", "unknown key"),
        ("[trainin]\nsteps = 4\n", "trainin", "the top level"),
        ("training = 5\n", "training", "a table [training]"),
        ("[quantize.linear.mx]\ncalibration = 3\n", "quantize.linear.mx.calibration", "a table"),
    ],
)
def test_unknown_keys_and_scalar_sections_refused(tmp_path, text, key, expect):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        check_config_file(args_for(p))
    assert e.value.key == key and expect in str(e.value), str(e.value)


def test_missing_or_broken_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        check_config_file(["--job.config_file", str(tmp_path / "nope.toml")])
    assert e.value.key == "job.config_file" and "nope.toml" in str(e.value)
    p = tmp_path / "broken.toml"
    p.write_text("[training\nsteps = 4\n")
    with pytest.raises(ConfigError) as e:
        check_config_file([f"--job.config_file={p}"])
    assert "not valid TOML" in str(e.value) and "broken.toml" in str(e.value)
    check_config_file(["--training.steps", "4"])  # no file: nothing to check
    p.write_text("[training]\nsteps = 4\n")
    with pytest.raises(ConfigError) as e:
        check_config_file(["--job.config_file", str(p), "--job.custom_config_module", "no_such_module"])
    assert e.value.key == "job.custom_config_module" and "no_such_module" in str(e.value)
