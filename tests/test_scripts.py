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
