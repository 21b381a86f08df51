"""The hardware (HW_CVT) branches of the quantize kernels compile for sm_90 on a machine without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_hardware_branches_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the repo itself, where adahop is not installed (the device machine runs it from the copied tree)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    r = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("compile_sm90.py"))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    cases = int(r.stdout.rsplit("cases: ", 1)[1])
    assert cases >= 15 and r.stdout.count("\nok ") + r.stdout.startswith("ok ") == cases, r.stdout
    assert "FAILED" not in r.stdout, r.stdout
