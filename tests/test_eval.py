"""adahop.eval on a tiny trained checkpoint reproduces the run's last validation loss."""

import json

import pytest

from train_helpers import base_toml, run_train, val_losses

EXTRA = """
[checkpoint]
enable = true
folder = "checkpoint"
interval = 6
last_save_model_only = false

[validation]
enable = true
dataset = "adahop_text_val"
local_batch_size = 2
seq_len = 64
freq = 6
steps = 3
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    dump = tmp / "out"
    cfg = tmp / "run.toml"
    cfg.write_text(base_toml(dump, steps=6, calibration_steps=3) + EXTRA)
    r = run_train(cfg)
    assert r.returncode == 0, r.stdout[-4000:]
    return dump, val_losses(r.stdout)[6]


def test_quantized_eval_reproduces_training_validation_loss(trained, tmp_path):
    from adahop.eval import main

    dump, logged = trained
    ckpt = dump / "checkpoint" / "step-6"
    assert (dump / "adahop_job.json").is_file()
    # no TOML given: the run's adahop_job.json describes the model, data and plan settings
    assert main(["--checkpoint_path", str(ckpt), "--quantized", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "eval_quantized.json").read_text())
    assert res["overall"]["loss"] == pytest.approx(logged, abs=1e-3)  # torchtitan logs 4 decimals
    assert set(res["by_source"]) >= {"gutenberg", "wikipedia"}
    assert (tmp_path / "eval_quantized.md").read_text().startswith("checkpoint:")
    # the high-precision forward of the same weights (barely trained: close to the MXFP4 one)
    assert main(["--checkpoint_path", str(ckpt), "--out", str(tmp_path)]) == 0
    hp = json.loads((tmp_path / "eval.json").read_text())
    assert hp["quantized"] is False and abs(hp["overall"]["loss"] - logged) < 0.5


def test_bad_checkpoints_refused(trained, tmp_path, capsys):
    from adahop.eval import main

    dump, _ = trained
    assert main(["--checkpoint_path", str(dump / "checkpoint" / "step-999")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--checkpoint_path", str(dump / "checkpoint" / "step-6"), "--model.flavor", "tiny"]) == 2
    assert "shape" in capsys.readouterr().err
