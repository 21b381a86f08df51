"""The README train command on a GPU (skipped without CUDA; run through the device tool)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from train_helpers import REPO, env, losses

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_default_config_trains_on_gpu(tmp_path):
    e = env({"NGPU": "1", "CONFIG_FILE": "configs/default.toml"})
    r = subprocess.run(
        ["./run_train.sh", "--training.steps", "30", "--job.dump_folder", str(tmp_path)],
        cwd=REPO,
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:]
    assert "[adahop] plan (calibration)" in r.stdout
    plan = json.loads((tmp_path / "adahop_plan.json").read_text())
    assert plan["source"] == "calibration"
    ls = losses(r.stdout)
    assert ls[30] < ls[1]
