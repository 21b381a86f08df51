"""A new user's first hour, on CPU (issue 25): a fresh clone of the repository, the README's set-up train command
with fewer steps, then every command block of README.md and docs/*.md marked runnable on CPU.

The marker: an HTML comment `<!-- cpu-test -->` on the line before a ```bash block (invisible on the rendered
page). Such a block runs as written, one command at a time, from the clone's root, after the set-up run, with
one change: the set-up run trains TINY_STEPS steps instead of 150, so "step-150" reads "step-<TINY_STEPS>".
The pip parts of the set-up command are not run: the test uses the environment it runs in (its torch, its
packages) with the clone first on PYTHONPATH.

Slow (a few minutes on 2 cores): `python -m pytest -q tests/test_first_hour.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_repo import readme_commands
from train_helpers import LAUNCH_VARIABLES, VAL_RE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cpu-test -->"
TINY_STEPS = 4
TINY = [
    "--training.steps",
    str(TINY_STEPS),
    "--quantize.linear.mx.calibration.calibration_steps",
    "2",
    "--validation.steps",
    "2",
    "--metrics.log_freq",
    "1",
]
#: messages a CPU run must not print (issue 25: they alarm without helping)
NOISE = re.compile(r"lspci|Peak flops undefined|set_vital|tests/assets/tokenizer")
TRAIN_RE = re.compile(r"(?<!validate )step:\s*(\d+)\s+(?:\x1b\[[0-9;]*m)?loss:\s*([0-9.]+)")


def marked_blocks(path: Path) -> list[str]:
    return re.findall(re.escape(MARKER) + r"[ \t]*\n```bash\n(.*?)\n```", path.read_text(), flags=re.S)


def commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fresh_clone(dest: Path) -> Path:
    """`git clone` of the repository, with the working tree's version of every tracked file copied over it (so
    that uncommitted edits are what is tested; in CI the two are the same)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        src, dst = ROOT / name, dest / name
        if src.is_file() and not src.is_symlink() and (not dst.is_file() or src.read_bytes() != dst.read_bytes()):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return dest


def run(cmd: str, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}  # run_train.sh's launch variables
    env["PYTHONPATH"] = str(cwd)  # the clone's adahop, not the checkout the environment was installed from
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHON"] = sys.executable  # run_train.sh's interpreter
    r = subprocess.run(
        ["bash", "-c", cmd],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stdout[-4000:]}"
    return r.stdout


def setup_train_command() -> str:
    """The README's set-up train command without its pip parts (the environment is installed already)."""
    parts = [p.strip() for p in readme_commands()[0].split("&&")]
    assert all(p.startswith("pip install") for p in parts[:-1]), parts
    return parts[-1]


def losses(log: str) -> tuple[dict, dict]:
    train = {int(s): float(v) for s, v in TRAIN_RE.findall(log)}
    val = {int(s): float(v) for s, v in VAL_RE.findall(log)}
    return train, val


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory):
    """The clone, the set-up run's log, and the output of every README command marked runnable."""
    clone = fresh_clone(tmp_path_factory.mktemp("fresh") / "adahop")
    before = run("git status --porcelain", clone)
    train_log = run(" ".join([setup_train_command(), *TINY]), clone)
    outputs = {}
    for block in marked_blocks(clone / "README.md"):
        for cmd in commands(block):
            outputs[cmd] = run(cmd.replace("step-150", f"step-{TINY_STEPS}"), clone)
    return clone, before, train_log, outputs


def test_readme_has_the_next_commands():
    next_cmds = [c for b in marked_blocks(ROOT / "README.md") for c in commands(b)]
    for tool in ("adahop.eval", "adahop.export_hf", "adahop.patterns", "adahop.sweep"):
        assert any(f"python -m {tool} " in c and "outputs/default/checkpoint/step-150" in c for c in next_cmds), tool


def test_setup_run_then_next_commands(first_hour):
    clone, _, train_log, outputs = first_hour
    run_dir = clone / "outputs" / "default"
    assert (run_dir / "checkpoint" / f"step-{TINY_STEPS}" / ".metadata").is_file()  # the final checkpoint
    assert (run_dir / "adahop_job.json").is_file() and (run_dir / "adahop_plan.json").is_file()
    assert set(losses(train_log)[0]) == set(range(1, TINY_STEPS + 1))
    evaluation = json.loads((run_dir / "checkpoint" / "eval_quantized.json").read_text())
    # the "all" row covers several sources, so it is none of the single-source rows
    assert len(evaluation["overall"]["tokens_by_source"]) >= 2
    assert all(row["loss"] != evaluation["overall"]["loss"] for row in evaluation["by_source"].values())
    assert (clone / "hf" / "default" / "config.json").is_file()
    assert (run_dir / "checkpoint" / "outlier_patterns" / f"step-{TINY_STEPS}" / "summary.png").is_file()
    assert (run_dir / "sweep" / "report.md").is_file()
    assert len(outputs) == 4


def test_cpu_log_is_quiet_and_shows_progress(first_hour):
    _, _, train_log, outputs = first_hour
    for log in (train_log, *outputs.values()):
        noisy = [line for line in log.splitlines() if NOISE.search(line)]
        assert not noisy, noisy
    step_lines = [line for line in train_log.splitlines() if TRAIN_RE.search(line)]
    assert len(step_lines) == TINY_STEPS
    assert all("steps/s: " in line and "left: " in line and "mfu: n/a" in line for line in step_lines), step_lines


def test_two_readme_runs_give_the_same_losses(first_hour):
    clone, _, train_log, _ = first_hour
    again = run(" ".join([setup_train_command(), *TINY, "--job.dump_folder", "outputs/again"]), clone)
    first, second = losses(train_log), losses(again)
    assert first[0] and first[1]  # training and validation losses logged
    assert first == second


def test_marked_docs_commands_run_as_written(first_hour):
    clone, before, _, _ = first_hour
    ran = 0
    for doc in doc_files()[1:]:
        for block in marked_blocks(clone / "docs" / doc.name):
            for cmd in commands(block):
                out = run(cmd.replace("step-150", f"step-{TINY_STEPS}"), clone)
                noisy = [line for line in out.splitlines() if NOISE.search(line)]
                assert not noisy, (cmd, noisy)
                ran += 1
    assert ran >= 5
    # what the tools wrote by default is ignored by git: the clone shows nothing new
    assert run("git status --porcelain", clone) == before
