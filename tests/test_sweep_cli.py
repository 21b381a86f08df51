"""python -m adahop.sweep on a nano model on CPU: report written, bad tables refused; the online sweep's
scheduler (--gpus groups, --parallel, failures, resume) with a fake launcher."""

import sys
from pathlib import Path

import pytest
from train_helpers import base_toml

from adahop.modes import PAIR_KEYS, SEED_TABLE


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
    rc = main(
        [
            "--tables",
            str(tables),
            "--steps",
            "1",
            "--max_tokens",
            "128",
            "--out",
            str(out),
            "--job.config_file",
            str(cfg),
        ]
    )
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


def test_online_sweep_two_tables_parallel_resumable(tmp_path, capsys, monkeypatch):
    import json

    from train_helpers import env

    from adahop.sweep.__main__ import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(
        base_toml(tmp_path / "dump", steps=4, calibration_steps=2)
        + """
[validation]
enable = true
dataset = "adahop_text_val"
local_batch_size = 2
seq_len = 64
freq = 4
steps = 2
"""
    )
    tables = tmp_path / "tables.toml"
    tables.write_text(tables_toml({"seed": SEED_TABLE, "plain": {k: "none" for k in PAIR_KEYS}}))
    out = tmp_path / "online"
    for k in ("PYTHONPATH", "OMP_NUM_THREADS"):  # the training subprocesses inherit these
        monkeypatch.setenv(k, env()[k])
    args = ["--online", "--parallel", "2", "--tables", str(tables), "--out", str(out), "--job.config_file", str(cfg)]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    report = (out / "report.md").read_text()
    assert "| seed |" in report and "| plain |" in report and "| rank | table | final validation loss" in report
    assert set(json.loads((out / "results.json").read_text())) == {"seed", "plain"}
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
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "adahop.patterns",
            "--job.config_file",
            str(cfg),
            "--out",
            str(out),
            "--max_tokens",
            "128",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "summary.png" in pngs and any("layers.0.attention.wq" in n for n in pngs)
    bad = subprocess.run(
        [sys.executable, "-m", "adahop.patterns", "--checkpoint_path", str(tmp_path / "none")],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
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


def fake_launcher(monkeypatch, behaviour: dict[str, tuple[float, int]]) -> list:
    """Replace the training run by a python one-liner that sleeps, logs one train and one validation loss
    and exits with a code (per table: behaviour[name] = (sleep_s, exit code)); records every launch."""
    from adahop.sweep import online

    real, calls = online.launch, []

    def launch(cmd, env, log_path):
        name = log_path.parent.name
        live = sum(c["proc"].poll() is None for c in calls)  # runs still going when this one starts
        sleep_s, code = behaviour.get(name, (0.0, 0))
        script = (
            f"import sys, time; time.sleep({sleep_s}); print('step:  1  loss:  2.0'); "
            f"print('validate step:  1  loss:  {2 + len(name) / 10}'); sys.exit({code})"
        )
        proc = real([sys.executable, "-c", script], env, log_path)
        calls.append({"name": name, "cmd": cmd, "env": env, "live": live, "proc": proc})
        return proc

    monkeypatch.setattr(online, "launch", launch)
    return calls


def online_args(tmp_path, names: list[str], *more: str) -> list[str]:
    cfg = tmp_path / "run.toml"
    cfg.write_text("# not read: the launcher is fake\n")
    tables = tmp_path / "tables.toml"
    tables.write_text(tables_toml({n: SEED_TABLE for n in names}))
    return ["--online", "--tables", str(tables), "--out", str(tmp_path / "out"), "--job.config_file", str(cfg), *more]


def test_online_gpu_groups_get_their_devices(tmp_path, capsys, monkeypatch):
    from adahop.sweep.__main__ import main

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth7")
    monkeypatch.setenv("MASTER_PORT", "29500")  # e.g. the sweep itself started under torchrun
    calls = fake_launcher(monkeypatch, {"a": (0.2, 0), "b": (2.0, 0)})
    args = online_args(tmp_path, ["a", "b", "c"], "--gpus", "0,1,2,3", "--nproc", "2", "--training.steps", "3")
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    # a and b start at once on the two groups; c takes the group of a, which ends first
    assert [(c["name"], c["env"]["CUDA_VISIBLE_DEVICES"], c["live"]) for c in calls] == [
        ("a", "0,1", 0),
        ("b", "2,3", 1),
        ("c", "0,1", 1),
    ]
    for c in calls:
        assert c["env"]["NCCL_SOCKET_IFNAME"] == "eth7"  # the rest of the environment passes through
        assert "MASTER_PORT" not in c["env"]  # but each run picks its own rendezvous
        assert "--nproc_per_node=2" in c["cmd"] and c["cmd"][-2:] == ["--training.steps", "3"]
    assert "CUDA_VISIBLE_DEVICES" not in __import__("os").environ
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(f"| {n} |" in report for n in "abc")


def test_online_sequential_failure_keeps_the_others_and_resumes(tmp_path, capsys, monkeypatch):
    from adahop.sweep.__main__ import main

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    behaviour = {"bad": (0.0, 1)}
    calls = fake_launcher(monkeypatch, behaviour)
    args = online_args(tmp_path, ["a", "bad", "c"], "--parallel", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "1 of 3 table(s) failed" in err
        and "table bad" in err
        and str(tmp_path / "out" / "runs" / "bad" / "train.log") in err
    )
    assert [c["live"] for c in calls] == [0, 0, 0]  # one after another
    assert all("CUDA_VISIBLE_DEVICES" not in c["env"] for c in calls)
    runs = tmp_path / "out" / "runs"
    assert (runs / "a" / "result.json").is_file() and (runs / "c" / "result.json").is_file()
    assert not (runs / "bad" / "result.json").exists()
    # the same command again trains only the failed table
    behaviour["bad"] = (0.0, 0)
    calls.clear()
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    assert [c["name"] for c in calls] == ["bad"]


@pytest.mark.parametrize(
    "more, words",
    [
        (["--gpus", "0,1,1"], ["--gpus 0,1,1", "GPU 1 given more than once"]),
        (["--gpus", "0,x"], ["--gpus '0,x'", "non-negative GPU ids"]),
        (["--gpus", "0,-1"], ["--gpus '0,-1'", "non-negative GPU ids"]),
        (["--gpus", "0,1,2", "--nproc", "2"], ["--gpus 0,1,2 (3 GPUs)", "--nproc 2", "multiple of 2"]),
        (["--gpus", "0,1", "--parallel", "2"], ["--gpus 0,1 and --parallel 2 exclude each other"]),
        (["--parallel", "0"], ["--parallel 0: must be >= 1"]),
        (["--parallel", "2", "--nproc", "2"], ["--parallel 2 with --nproc 2", "place them with --gpus"]),
    ],
)
def test_online_gpus_and_parallel_refused_before_training(tmp_path, capsys, monkeypatch, more, words):
    from adahop.sweep.__main__ import main

    calls = fake_launcher(monkeypatch, {})
    assert main(online_args(tmp_path, ["a", "b"], *more)) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert calls == [] and not (tmp_path / "out").exists()
    assert main(["--tables", "t.toml", "--gpus", "0"]) == 2  # offline: no runs to place
    assert "only apply to --online" in capsys.readouterr().err


def test_shipped_tables_file_loads():
    from adahop.modes import PAIR_KEYS
    from adahop.sweep.__main__ import load_tables

    tables = load_tables(str(Path(__file__).resolve().parents[1] / "configs" / "sweep" / "tables.toml"))
    assert set(tables) == {"seed", "plain_mxfp4", "hadamard", "seed_all_mxfp4"}
    assert all(set(t) == set(PAIR_KEYS) for t in tables.values())
    assert set(tables["plain_mxfp4"].values()) == {"none"} and set(tables["hadamard"].values()) == {"hadamard"}


@pytest.mark.parametrize("name", ["../../escaped_sweep", "a/b", ".hidden", "..", "tab le", "x" * 101])
def test_table_names_that_are_not_folder_names_refused_before_any_run(tmp_path, capsys, monkeypatch, name):
    from adahop.sweep.__main__ import main
    from adahop.sweep.online import run_tables

    calls = fake_launcher(monkeypatch, {})
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    cfg = work / "run.toml"
    cfg.write_text("# not read: the launcher is fake\n")
    tables = work / "tables.toml"
    tables.write_text(tables_toml({"ok": SEED_TABLE, f'"{name}"': SEED_TABLE}))
    for more in (["--online"], []):
        assert main([*more, "--tables", str(tables), "--out", str(work / "out"), "--job.config_file", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"table name {name!r}" in err and "letters, digits" in err and str(tables) in err, err
    assert calls == [] and sorted(p.name for p in work.iterdir()) == ["run.toml", "tables.toml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing written outside --out either
    with pytest.raises(ValueError, match="table name"):  # the Python entry point checks them too
        run_tables({name: SEED_TABLE}, str(cfg), work / "out", [])
    assert calls == []


def test_online_parallel_defaults_to_the_cores():
    from adahop.sweep.online import CPU_THREADS_PER_RUN, auto_parallel

    assert CPU_THREADS_PER_RUN == 2
    assert auto_parallel(1, tables=10, cores=16, has_gpu=False) == 8
    assert auto_parallel(1, tables=4, cores=16, has_gpu=False) == 4  # no more runs than tables
    assert auto_parallel(1, tables=4, cores=2, has_gpu=False) == 1
    assert auto_parallel(1, tables=4, cores=1, has_gpu=False) == 1
    assert auto_parallel(1, tables=4, cores=16, has_gpu=True) == 1  # unpinned runs would share the GPU
    assert auto_parallel(2, tables=4, cores=16, has_gpu=False) == 1  # ranks of runs side by side: --gpus


def test_online_default_parallel_runs_side_by_side_with_their_share_of_threads(tmp_path, capsys, monkeypatch):
    from adahop.sweep import __main__ as cli

    monkeypatch.setattr(cli, "usable_cores", lambda: 4)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    calls = fake_launcher(monkeypatch, {"a": (1.0, 0), "b": (1.0, 0)})
    assert cli.main(online_args(tmp_path, ["a", "b"])) == 0, capsys.readouterr().err[-2000:]
    assert [c["live"] for c in calls] == [0, 1]  # 4 cores: two runs at once
    assert [c["env"]["OMP_NUM_THREADS"] for c in calls] == ["2", "2"]


def test_online_sweep_shows_each_runs_steps_on_the_console(tmp_path, capsys, monkeypatch):
    from adahop.sweep import online
    from adahop.sweep.__main__ import main

    real = online.launch

    def launch(cmd, env, log_path):  # a run that logs like adahop.train: total steps, then two step lines
        lines = [
            "Trainer is initialized with local batch size 2, total steps 2 (warmup 1)",
            "step:  1  loss:  3.0  tps: 10  steps/s: 0.50  left: 2s",
            "validate step:  1  loss:  3.5",
            "step:  2  loss:  2.5  tps: 10  steps/s: 0.50  left: 0s",
        ]
        script = "import time\n" + "".join(f"print({line!r}, flush=True); time.sleep(0.3)\n" for line in lines)
        return real([sys.executable, "-c", script], env, log_path)

    monkeypatch.setattr(online, "launch", launch)
    assert main(online_args(tmp_path, ["a"], "--parallel", "1")) == 0
    err = capsys.readouterr().err
    assert "[adahop] a: step 1/2, 0.50 steps/s, 2s left" in err, err
    assert "[adahop] a: step 2/2, 0.50 steps/s, 0s left" in err, err


def test_log_progress_reads_only_what_the_log_gained(tmp_path):
    from adahop.sweep.online import LogProgress

    log = tmp_path / "train.log"
    progress = LogProgress(log)
    assert not progress.poll()  # no log yet
    log.write_text(
        "total steps 10 (warmup 2)\n\x1b[31mstep:  1  \x1b[32mloss:  9.1  steps/s: 1.50  left: 6s\nstep:  2  loss:"
    )  # an unfinished line
    assert progress.poll() and progress.describe() == "step 1/10, 1.50 steps/s, 6s left"
    assert not progress.poll()  # nothing new
    with log.open("a") as f:
        f.write("  8.9\nvalidate step:  2  loss:  9.0\n")
    assert progress.poll() and progress.describe() == "step 2/10"


def test_patterns_default_out_is_next_to_the_checkpoint(tmp_path):
    from adahop.patterns_cli import default_out

    step = tmp_path / "run" / "checkpoint" / "step-150"
    # not a step-N name in the checkpoint folder itself: torchtitan would count (and purge) it as a checkpoint
    assert default_out(str(step), "./elsewhere") == tmp_path / "run" / "checkpoint" / "outlier_patterns" / "step-150"
    assert default_out(None, "outputs/default") == Path("outputs/default/outlier_patterns/init")
