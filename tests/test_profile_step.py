"""scripts/profile_step.py runs end to end on CPU (tiny model, one step): the BF16 / AdaHOP table and the
kernel-group table are printed (the GPU numbers live in docs/benchmarks.md)."""

import sys

from train_helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
from profile_step import main  # noqa: E402


def test_profile_step_prints_both_tables(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the config's relative paths (tokenizer, data), as from the command line
    args = ["--job.config_file", "configs/default.toml", "--batch", "1", "--seq", "64", "--steps", "1", "--rows", "3"]
    main(args)
    out = capsys.readouterr().out
    for row in ("| bf16 |", "| adahop, sync per GEMM |", "| adahop (as trained: deferred check) |", "| group |"):
        assert row in out, out[-2000:]
    assert "model tiny, batch 1 x 64 per rank" in out and "one device" in out
