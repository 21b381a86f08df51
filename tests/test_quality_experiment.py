"""scripts/quality_experiment.py on CPU with a nano model: runs, resumes, writes the report."""

import json
import subprocess
import sys

from train_helpers import REPO, env

SMALL = [
    "--model.flavor",
    "nano",
    "--training.steps",
    "4",
    "--training.local_batch_size",
    "2",
    "--training.seq_len",
    "64",
    "--training.mixed_precision_param",
    "float32",
    "--validation.seq_len",
    "64",
    "--validation.local_batch_size",
    "2",
    "--validation.freq",
    "2",
    "--validation.steps",
    "2",
    "--quantize.linear.mx.calibration.calibration_steps",
    "2",
    "--checkpoint.interval",
    "2",
    "--lr_scheduler.warmup_steps",
    "2",
    "--metrics.log_freq",
    "1",
]


def test_two_recipes_report_and_resume(tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "quality.md"
    # pinned to "GPUs" 0 and 1, both at once (on a CPU machine the pinning only sets CUDA_VISIBLE_DEVICES)
    cmd = [
        sys.executable,
        "scripts/quality_experiment.py",
        "--recipes",
        "bf16",
        "adahop",
        "--gpus",
        "0,1",
        "--out",
        str(runs),
        "--report",
        str(report),
        *SMALL,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "start bf16 on GPU 0" in r.stderr and "start adahop on GPU 1" in r.stderr
    assert "GPU 1 " in (runs / "adahop" / "train.log").read_text().splitlines()[1]
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
    # --report-only: the report of what is finished, nothing trained (a third recipe is not started)
    again = tmp_path / "again.md"
    r = subprocess.run(
        [
            sys.executable,
            "scripts/quality_experiment.py",
            "--report-only",
            "--recipes",
            "bf16",
            "adahop",
            "mxfp4",
            "--out",
            str(runs),
            "--report",
            str(again),
            *SMALL,
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| bf16 | 4 |" in again.read_text() and not (runs / "mxfp4").exists()
    assert "Not finished yet: mxfp4." in again.read_text()
    # a float8 run finished on a GPU is reported on a CPU machine too (only training it needs CUDA)
    f8 = json.loads((runs / "bf16" / "done.json").read_text())
    f8["meta"]["signature"]["recipe"] = ["--model.converters", "quantize.linear.float8"]
    (runs / "float8").mkdir()
    (runs / "float8" / "done.json").write_text(json.dumps(f8))
    r = subprocess.run(
        [
            sys.executable,
            "scripts/quality_experiment.py",
            "--report-only",
            "--recipes",
            "bf16",
            "float8",
            "--out",
            str(runs),
            "--report",
            str(again),
            *SMALL,
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| float8 | 4 |" in again.read_text() and "Not finished yet" not in again.read_text()
    meta = done["meta"]
    assert meta["device"] == "CPU" and meta["signature"]["recipe"] == [] and meta["command"].startswith("python -m")
    # a stored result of another experiment (here: other overrides) is refused before anything trains
    r = subprocess.run(
        [*cmd[: -len(SMALL)], *SMALL[:-2], "--metrics.log_freq", "2"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "written by another experiment (differs in: extra; extra: stored [" in r.stderr, (
        r.stderr[-2000:]
    )
    assert (runs / "bf16" / "train.log").stat().st_mtime == mtime


def test_bad_gpus_refused_before_training(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    from quality_experiment import main

    monkeypatch.chdir(REPO)
    for gpus in ("0,0", "0,x"):
        assert main(["--gpus", gpus, "--out", str(tmp_path)]) == 2
        assert "--gpus" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
