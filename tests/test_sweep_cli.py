"""python -m adahop.sweep on a nano model on CPU: report written, bad tables refused."""

from adahop.modes import PAIR_KEYS, SEED_TABLE
from train_helpers import base_toml


def tables_toml(tables: dict) -> str:
    out = []
    for name, t in tables.items():
        out.append(f"[tables.{name}]")
        out += [f'"{k}" = "{v}"' for k, v in t.items()]
    return "\n".join(out) + "\n"


def test_offline_sweep_cli_writes_report(tmp_path, capsys):
    from adahop.sweep.__main__ import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(base_toml(tmp_path / "dump", steps=4))
    tables = tmp_path / "tables.toml"
    tables.write_text(tables_toml({"seed": SEED_TABLE, "plain": {k: "none" for k in PAIR_KEYS}}))
    out = tmp_path / "sweep"
    rc = main(["--tables", str(tables), "--steps", "1", "--max_tokens", "128", "--out", str(out),
               "--job.config_file", str(cfg)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    report = (out / "report.md").read_text()
    assert "| seed |" in report and "| plain |" in report and "best (found)" in report
    assert "layers.0.attention.wq" in report
    for name in ("results.json", "layer_errors.png", "ranking.png"):
        assert (out / name).stat().st_size > 0


def test_bad_tables_refused(tmp_path, capsys):
    from adahop.sweep.__main__ import main

    bad = tmp_path / "bad.toml"
    bad.write_text(tables_toml({"t": {**SEED_TABLE, "col-col": "rotate"}}))
    assert main(["--tables", str(bad), "--job.config_file", "x.toml"]) == 2
    err = capsys.readouterr().err
    assert "tables.t" in err and "'rotate'" in err and "inner_outlier_extract_left" in err
    assert main(["--tables", str(tmp_path / "missing.toml"), "--job.config_file", "x.toml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_online_sweep_two_tables_resumable(tmp_path, capsys, monkeypatch):
    import json

    from adahop.sweep.__main__ import main
    from train_helpers import env

    cfg = tmp_path / "run.toml"
    cfg.write_text(base_toml(tmp_path / "dump", steps=4, calibration_steps=2) + """
[validation]
enable = true
dataset = "adahop_text_val"
local_batch_size = 2
seq_len = 64
freq = 4
steps = 2
""")
    tables = tmp_path / "tables.toml"
    tables.write_text(tables_toml({"seed": SEED_TABLE, "plain": {k: "none" for k in PAIR_KEYS}}))
    out = tmp_path / "online"
    for k in ("PYTHONPATH", "OMP_NUM_THREADS"):  # the training subprocesses inherit these
        monkeypatch.setenv(k, env()[k])
    args = ["--online", "--tables", str(tables), "--out", str(out), "--job.config_file", str(cfg)]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    report = (out / "report.md").read_text()
    assert "| seed |" in report and "| plain |" in report
    assert (out / "loss_curves.png").stat().st_size > 0
    plain = json.loads((out / "runs" / "plain" / "result.json").read_text())
    assert plain["final_step"] == 4 and plain["table"]["row-none"] == "none"
    plan = json.loads((out / "runs" / "plain" / "adahop_plan.json").read_text())
    assert {m for layer in plan["layers"].values() for m in layer["modes"].values()} == {"none"}
    # a second call finds both results and trains nothing
    mtime = (out / "runs" / "seed" / "train.log").stat().st_mtime
    assert main(args) == 0
    assert (out / "runs" / "seed" / "train.log").stat().st_mtime == mtime


def test_patterns_cli_draws_a_model(tmp_path):
    import subprocess
    import sys

    from train_helpers import REPO, env

    cfg = tmp_path / "run.toml"
    cfg.write_text(base_toml(tmp_path / "dump", steps=4))
    out = tmp_path / "maps"
    r = subprocess.run([sys.executable, "-m", "adahop.patterns", "--job.config_file", str(cfg), "--out", str(out),
                        "--max_tokens", "128"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "summary.png" in pngs and any("layers.0.attention.wq" in n for n in pngs)
    bad = subprocess.run([sys.executable, "-m", "adahop.patterns", "--checkpoint_path", str(tmp_path / "none")],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_online_results_parse_nan_and_refuse_stale_cache(tmp_path):
    import json

    import pytest

    from adahop.sweep.online import parse_log, run_table

    parsed = parse_log("step:  1  loss:  8.12345  x\nstep:  2  loss:      nan\nvalidate step:  2  loss:  inf\n")
    assert parsed["train"][1] == 8.12345 and parsed["train"][2] != parsed["train"][2]  # NaN kept, not dropped
    assert parsed["validation"][2] == float("inf")
    run_dir = tmp_path / "runs" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"table": dict(SEED_TABLE), "overrides": []}))
    assert run_table("t", dict(SEED_TABLE), "c.toml", tmp_path, [], 1)["table"] == SEED_TABLE
    with pytest.raises(ValueError, match="different table"):
        run_table("t", {**SEED_TABLE, "row-row": "none"}, "c.toml", tmp_path, [], 1)
