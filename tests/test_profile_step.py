"""scripts/profile_step.py runs end to end on CPU (tiny model, one step): the BF16 / AdaHOP table and the
kernel-group table are printed (the GPU numbers live in docs/benchmarks.md)."""

import subprocess
import sys

from train_helpers import REPO, env


def test_profile_step_prints_both_tables():
    r = subprocess.run(
        [
            sys.executable,
            "scripts/profile_step.py",
            "--job.config_file",
            "configs/default.toml",
            "--batch",
            "1",
            "--seq",
            "64",
            "--steps",
            "1",
            "--rows",
            "3",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for row in ("| bf16 |", "| adahop, sync per GEMM |", "| adahop (as trained: deferred check) |", "| group |"):
        assert row in out, out[-2000:]
    assert "model tiny, batch 1 x 64 per rank" in out and "one device" in out
