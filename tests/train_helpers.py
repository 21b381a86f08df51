"""Helpers for the end-to-end CPU training tests (not a test module)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "adahop" / "data" / "assets" / "tokenizer"

STEP_RE = re.compile(r"step:\s*(\d+)\s+(?:\x1b\[[0-9;]*m)?loss:\s*([0-9.]+)")
RANK_RE = re.compile(r"^\[default(\d+)\]:")
VAL_RE = re.compile(r"validate step:\s*(\d+)\s+(?:\x1b\[[0-9;]*m)?loss:\s*([0-9.]+)")
DIGEST_RE = re.compile(r"(?:\[default(\d+)\]:)?.*\[adahop\] plan digest ([0-9a-f]+)")


def base_toml(dump: Path, *, steps: int = 6, calibration_steps: int = 3, extra: str = "") -> str:
    return f"""
[job]
dump_folder = "{dump}"
description = "adahop cpu test"

[metrics]
log_freq = 1
disable_color_printing = true

[model]
name = "adahop_llama3"
flavor = "nano"
hf_assets_path = "{TOKENIZER}"
converters = ["quantize.linear.mx"]

[optimizer]
lr = 3e-3

[lr_scheduler]
warmup_steps = 2

[training]
dataset = "adahop_text"
local_batch_size = 2
seq_len = 64
steps = {steps}
mixed_precision_param = "float32"

[activation_checkpoint]
mode = "none"

[debug]
seed = 1234

[quantize.linear.mx]
filter_fqns = ["output"]

[quantize.linear.mx.calibration]
use_HT_calibration = true
calibration_steps = {calibration_steps}
{extra}
"""


#: the launch settings of torchrun and of run_train.sh (several nodes): a caller's would reach the runs started here
LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NNODES",
    "NODE_RANK",
    "RDZV_ENDPOINT",
    "RDZV_ID",
)


def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e.pop("ADAHOP_DEBUG_KILL_AT_STEP", None)
    e.update(extra or {})
    paths = [str(REPO), str(REPO / "tests")]  # tests/: --experimental.custom_import adahop_test_flavors
    e["PYTHONPATH"] = os.pathsep.join(paths + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONUNBUFFERED"] = "1"
    # the caller's launch settings (torchrun's, and run_train.sh's for several nodes) would reach the runs
    for k in LAUNCH_VARIABLES:
        if k not in (extra or {}):
            e.pop(k, None)
    return e


def command(
    config: Path, args: list[str] = (), nproc: int = 1, log_dir: Path | None = None, module: str = "adahop.train"
) -> list[str]:
    """The training command; `module` debug_train runs the trainer with the tests' hooks (tests/debug_train.py)."""
    if nproc == 1:
        return [sys.executable, "-m", module, "--job.config_file", str(config), *args]
    logs = ["--log-dir", str(log_dir), "--redirects", "3"] if log_dir is not None else []
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "localhost:0",
        "--tee",
        "3",
        *logs,
        "-m",
        module,
        "--job.config_file",
        str(config),
        *args,
    ]


def _rank_logs(log_dir: Path, nproc: int) -> str:
    """Per-rank output from torchrun's --log-dir files, each line prefixed [default<rank>]:
    (the ranks' lines can interleave on the shared console stream)."""
    out = []
    for r in range(nproc):
        for name in ("stdout.log", "stderr.log"):
            for f in sorted(log_dir.glob(f"**/attempt_*/{r}/{name}")):
                out += [f"[default{r}]:{line}" for line in f.read_text(errors="replace").splitlines()]
    return "\n".join(out) + "\n"


def run_train(
    config: Path, args: list[str] = (), nproc: int = 1, timeout: float = 600, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    log_dir = None
    if nproc > 1:
        log_dir = Path(tempfile.mkdtemp(prefix="adahop_ranklogs_"))
    module = "debug_train" if any(k.startswith("ADAHOP_DEBUG_") for k in extra_env or {}) else "adahop.train"
    r = subprocess.run(
        command(config, args, nproc, log_dir, module),
        cwd=REPO,
        env=env(extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if log_dir is not None:
        per_rank = _rank_logs(log_dir, nproc)
        shutil.rmtree(log_dir, ignore_errors=True)
        if per_rank.strip():
            r.stdout = (
                per_rank
                + "\n---- console ----\n"
                + "\n".join(line for line in r.stdout.splitlines() if not line.startswith("[default"))
            )
    return r


def run_until(config: Path, pattern: str, args: list[str] = (), nproc: int = 1, timeout: float = 600) -> str:
    """Start training, SIGKILL the whole process group as soon as `pattern` appears in the output."""
    proc = subprocess.Popen(
        command(config, args, nproc),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = []
    deadline = time.time() + timeout
    rx = re.compile(pattern)
    try:
        for line in proc.stdout:
            out.append(line)
            if rx.search(line):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if time.time() > deadline:
                raise TimeoutError("".join(out[-50:]))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return "".join(out)


def losses(output: str, rank: int = 0) -> dict[int, float]:
    out = {}
    for line in output.splitlines():
        m = STEP_RE.search(line)
        if m is None or "validate" in line:
            continue
        rm = RANK_RE.match(line)
        if (int(rm.group(1)) if rm else 0) == rank:
            out[int(m.group(1))] = float(m.group(2))
    return out


def val_losses(output: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in VAL_RE.finditer(output)}


def digests(output: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for m in DIGEST_RE.finditer(output):
        out.setdefault(int(m.group(1) or 0), []).append(m.group(2))
    return out
