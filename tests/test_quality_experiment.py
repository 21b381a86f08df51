"""scripts/quality_experiment.py on CPU with a nano model: runs, resumes, writes the report."""

import json
import subprocess
import sys

from train_helpers import REPO, env

SMALL = ["--model.flavor", "nano", "--training.steps", "4", "--training.local_batch_size", "2",
         "--training.seq_len", "64", "--training.mixed_precision_param", "float32", "--validation.seq_len", "64",
         "--validation.local_batch_size", "2", "--validation.freq", "2", "--validation.steps", "2",
         "--quantize.linear.mx.calibration.calibration_steps", "2", "--checkpoint.interval", "2",
         "--lr_scheduler.warmup_steps", "2", "--metrics.log_freq", "1"]


def test_two_recipes_report_and_resume(tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "quality.md"
    cmd = [sys.executable, "scripts/quality_experiment.py", "--recipes", "bf16", "adahop", "--parallel", "2",
           "--out", str(runs), "--report", str(report), *SMALL]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = report.read_text()
    assert "| bf16 | 4 |" in text and "| adahop | 4 |" in text and "+0.00%" in text
    assert "adahop: 14 layers, 42 slots" in text and "python -m adahop.train" in text
    assert report.with_suffix(".png").stat().st_size > 0
    done = json.loads((runs / "adahop" / "done.json").read_text())
    assert set(map(int, done["validation"])) >= {2, 4}
    # finished recipes are not trained again
    mtime = (runs / "bf16" / "train.log").stat().st_mtime
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and (runs / "bf16" / "train.log").stat().st_mtime == mtime
