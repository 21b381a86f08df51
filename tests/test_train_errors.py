"""`python -m adahop.train` on bad input: one line on stderr, exit code 2, no traceback (adahop.cli)."""

from __future__ import annotations

import subprocess

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
    ["ADAHOP_TILE_B", "ADAHOP_SYNC_EVERY_GEMM", "ADAHOP_DEFICIENT_REPORT", "ADAHOP_DUAL_QUANT", "ADAHOP_SIDE_STREAM"],
)
def test_removed_environment_switches_refused_naming_the_replacement(name):
    from adahop.config import ConfigError
    from adahop.train import REMOVED_SWITCHES, check_removed_switches

    with pytest.raises(ConfigError) as e:
        check_removed_switches({name: "1"})
    assert name in str(e.value) and REMOVED_SWITCHES[name].split()[0] in str(e.value)
    check_removed_switches({"ADAHOP_FORCE_REFERENCE": "1"})  # still a debugging switch: not refused
