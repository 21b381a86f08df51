"""scripts/ holds user tools: each file there answers --help (exit 0, a usage text) without doing its work."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TOOLS = sorted(p for p in SCRIPTS.iterdir() if p.is_file())


def test_scripts_folder_holds_tools_and_the_gpu_tasks_only():
    assert {p.suffix for p in TOOLS} <= {".py", ".sh", ".slurm"}, [p.name for p in TOOLS]
    assert {p.name for p in SCRIPTS.iterdir() if p.is_dir()} <= {"gpu", "__pycache__"}
    tasks = {p.stem for p in (SCRIPTS / "gpu").glob("*.sh")} - {"env", "run_1b"}  # those two are its library
    gpu_sh = (SCRIPTS / "gpu.sh").read_text()
    assert all(f"bash scripts/gpu.sh {t}" in gpu_sh for t in tasks), tasks  # every task reachable and documented


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_every_tool_answers_help(tool, tmp_path):
    cmd = [sys.executable, str(tool), "--help"] if tool.suffix == ".py" else ["bash", str(tool), "--help"]
    r = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "OUT": str(tmp_path / "out"),
            "HOME": str(tmp_path),
            "PYTHONPATH": str(SCRIPTS.parent),
        },
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(r.stdout.strip().splitlines()) >= 2, r.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / ".whl").exists()  # it did none of its work


def test_gpu_entry_point_refuses_an_unknown_task_in_one_line():
    r = subprocess.run(["bash", str(SCRIPTS / "gpu.sh"), "train"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "allowed: tests bench" in r.stderr


def test_summarize_runs_reads_tokens_memory_losses_and_redone_steps(tmp_path):
    """The peers table of scripts/bench_1b_peers.sh: the numbers come from torchtitan's log lines (colour codes
    included), and the steps the trainer redid are listed, so that a count cannot be lost with the log."""

    def line(step, loss, mem, tps):
        return (
            f"[rank0]:[titan] - root - INFO - \x1b[31mstep: {step:2d}  \x1b[32mloss: {loss:8.5f}  "
            f"\x1b[38;2;180;60;0mgrad_norm:  1.0  \x1b[38;2;54;234;195mmemory: {mem:5.2f}GiB(40%)  "
            f"\x1b[34mtps: {tps:,}  \x1b[36mtflops: 1.0\n"
        )

    redo = "[rank0]:[titan] - root - WARNING - [adahop] step 12: 3 MXFP4 block(s) ...; running the step again ...\n"
    # a's step 5 (an eager calibration step, say) holds the run's peak; the late peak leaves it out
    (tmp_path / "train_a.log").write_text(line(5, 9.0, 14.0, 100) + line(10, 8.0, 12.0, 1000) + line(15, 7.0, 11, 3000))
    (tmp_path / "train_b.log").write_text(
        line(5, 9.0, 5.0, 100) + redo + line(10, 8.5, 6.0, 1500) + line(15, 7.5, 6, 1500)
    )
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "summarize_runs.py"), str(tmp_path), "a", "b", "--after", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rows = {
        row.split(" | ")[0].strip("| "): row.split(" | ")
        for row in r.stdout.splitlines()
        if row.startswith("| a ") or row.startswith("| b ")
    }
    assert rows["a"][2] == "2000" and rows["a"][3] == "1.00x" and rows["a"][4] == "14.00" and rows["a"][6] == "12.00"
    assert rows["b"][2] == "1500" and rows["b"][3] == "0.75x" and rows["b"][5] == "0.43x" and rows["b"][7] == "0.50x"
    assert rows["a"][-1] == "none |" and rows["b"][-1] == "12 |"


def test_bench_grouped_refuses_without_a_gpu_and_draws_uneven_groups():
    """scripts/bench_grouped.py: one line without a GPU; its routing sums to the token count, unevenly."""
    r = subprocess.run([sys.executable, str(SCRIPTS / "bench_grouped.py")], capture_output=True, text=True, timeout=120)
    if not __import__("torch").cuda.is_available():
        assert r.returncode != 0 and "run it on a GPU machine" in r.stderr + r.stdout
    sys.path.insert(0, str(SCRIPTS))
    try:
        from bench_grouped import group_sizes
    finally:
        sys.path.remove(str(SCRIPTS))
    sizes = group_sizes(32768, 32)
    assert int(sizes.sum()) == 32768 and int(sizes.min()) >= 0 and int(sizes.max()) > 2 * int(sizes.min())


def test_attention_gradient_study_runs_its_variants_against_the_reference_ops():
    """scripts/attention_gradient_study.py: its all-MXFP4 variant is the repository's reference op (difference 0),
    every input case gets a table with the four variants, and the key offset costs the unsmoothed dQ more than
    the smoothed one."""
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "attention_gradient_study.py"), "--seq", "128"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max |diff| / max |ref| = 0.00e+00" in r.stdout
    offset = r.stdout.split("## offset:")[1].split("##")[0]
    rows = {line.split("|")[1].strip(): line.split("|") for line in offset.splitlines() if line.startswith("| ")}
    assert {"current", "full dP", "smooth K", "full dP + smooth K"} <= set(rows)
    assert float(rows["current"][3]) > 2 * float(rows["smooth K"][3])  # rel dQ
