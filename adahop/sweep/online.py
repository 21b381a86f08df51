"""Online table sweep: one short training run per table, ranked by final validation loss.

Each run is `python -m adahop.train` (or torchrun with --nproc ranks) on the same config, with the table given
key by key as CLI overrides of [quantize.linear.mx.calibration.layer_transform_config], in its own
dump folder <out>/runs/<table>. A run that finished leaves result.json there and is not run again, so an
interrupted sweep resumes where it stopped; a stored result of another table or other overrides is refused
before anything is trained.

Scheduling (run_tables): the runs go through a list of slots, one run per slot at a time, the next table
starting on a slot as soon as its run ends. Slots come from gpu_slots: --gpus 0,1,2,3 with --nproc 2 gives
two slots, whose runs see CUDA_VISIBLE_DEVICES=0,1 and 2,3; without --gpus, --parallel N gives N slots without
GPU pinning (default: on CPU as many as the cores allow, auto_parallel; else 1, one run after another). Each
run's logged steps are reported as they come (on_progress: the step, steps/s, time left). A failed run does not
stop the others: every run that succeeds stores its result.json, and the failures are raised together at the
end, so the same command trains only the failed tables again.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ..cli import UsageError
from ..files import write_text_atomic
from ..modes import PAIR_KEYS

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TOTAL_LINE = re.compile(r"total steps (\d+)")  # torchtitan's "Trainer is initialized with ..." line
RATE = re.compile(r"steps/s:\s*(\S+)\s+left:\s*(\S+)")  # adahop.titan.logs's step line
TRAIN_LINE = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:\s*([0-9.]+|nan|-?inf)")
VAL_LINE = re.compile(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+|nan|-?inf)")
KEY = "--quantize.linear.mx.calibration.layer_transform_config"
#: a table's name is the folder of its run (<out>/runs/<name>): no separators, no "..", no leading dot
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class TablesFailed(RuntimeError):
    """Some training runs of an online sweep failed; the message names each table and its log."""


def check_table_name(name: str, where: str = "table") -> str:
    """`name` if it is a safe folder name, else UsageError naming it (checked before any run starts)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UsageError(
            f"{where}: table name {name!r} cannot be a folder name (each table trains in <out>/runs/<name>): use "
            "1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def table_args(table: dict[str, str]) -> list[str]:
    return [a for k in PAIR_KEYS for a in (f"{KEY}.{k}", table[k])]


def parse_log(text: str) -> dict:
    text = ANSI.sub("", text)
    train = {int(s): float(v) for s, v in TRAIN_LINE.findall(text)}
    val = {int(s): float(v) for s, v in VAL_LINE.findall(text)}
    return {"train": train, "validation": val}


# set by torchrun / adahop.train for one process group; runs started at once must each choose their own
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


#: CPU threads a training run is given when --parallel is left to the machine's cores
CPU_THREADS_PER_RUN = 2


def auto_parallel(nproc: int, tables: int, cores: int, has_gpu: bool) -> int:
    """--parallel when not given: on CPU, as many runs as the cores give CPU_THREADS_PER_RUN threads to each rank
    (at most one per table); with a GPU, or runs of several ranks, 1 (runs without --gpus share the devices)."""
    if has_gpu or nproc > 1:
        return 1
    return max(1, min(tables, cores // CPU_THREADS_PER_RUN))


def gpu_slots(gpus: str, nproc: int, parallel: int) -> list[str | None]:
    """The runs that may go at once: one CUDA_VISIBLE_DEVICES value per group of `nproc` GPUs of `gpus`
    ("0,1,2,3"), or, without `gpus`, `parallel` slots without GPU pinning (None). Raises UsageError."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: must be >= 1 (ranks per training run)")
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: must be >= 1 (training runs at once)")
    if not gpus:
        if parallel > 1 and nproc > 1:
            raise UsageError(
                f"--parallel {parallel} with --nproc {nproc}: runs of several ranks each would all start on the same "
                "devices; place them with --gpus (e.g. --gpus 0,1,2,3 --nproc 2)"
            )
        return [None] * parallel
    if parallel != 1:
        raise UsageError(
            f"--gpus {gpus} and --parallel {parallel} exclude each other: --gpus runs one table per group of "
            "--nproc GPUs at once; --parallel N runs N tables at once without GPU pinning (e.g. on CPU)"
        )
    try:
        ids = [int(g) for g in gpus.split(",")]
    except ValueError:
        ids = [-1]
    if any(i < 0 for i in ids):
        raise UsageError(f"--gpus {gpus!r}: expected non-negative GPU ids separated by commas, e.g. --gpus 0,1,2,3")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise UsageError(
            f"--gpus {gpus}: GPU {', '.join(map(str, twice))} given more than once; the ids must be distinct"
        )
    if len(ids) % nproc:
        raise UsageError(
            f"--gpus {gpus} ({len(ids)} GPUs) cannot be split into groups of --nproc {nproc}: give a multiple of "
            f"{nproc} GPUs (each group of --nproc trains one table at a time)"
        )
    return [",".join(map(str, ids[i : i + nproc])) for i in range(0, len(ids), nproc)]


def cached_result(name: str, table: dict[str, str], out: Path, extra: list[str]) -> dict | None:
    """The stored result of table `name`, None if it has none; UsageError if it was made with another table
    or other overrides."""
    run_dir = out / "runs" / name
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        return None
    try:
        cached = json.loads(result_file.read_text())
    except ValueError as e:
        raise UsageError(
            f"{result_file} is not a result this sweep wrote ({e}): delete {run_dir} to train "
            f"table {name!r} again, or use another --out"
        ) from None
    if cached.get("table") != table or cached.get("overrides") != extra:
        raise UsageError(
            f"{run_dir} holds the result of a different table or different overrides than table {name!r} "
            "now has: use another --out, or delete that folder to train it again"
        )
    return cached


def train_command(run_dir: Path, table: dict[str, str], config: str, extra: list[str], nproc: int) -> list[str]:
    train = [
        "-m",
        "adahop.train",
        "--job.config_file",
        config,
        "--job.dump_folder",
        str(run_dir),
        "--metrics.disable_color_printing",
        *table_args(table),
        *extra,
    ]
    if nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            "localhost:0",
            "--local-ranks-filter",
            "0",
            "--role",
            "rank",
            "--tee",
            "3",
            *train,
        ]
    return [sys.executable, *train]


class LogProgress:
    """Follows a run's train.log as it grows (reading only what was added): the newest training step logged,
    the run's total steps and, from the step line, steps/s and the time left."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""
        self.step: int | None = None
        self.total: int | None = None
        self.rate = ""

    def poll(self) -> bool:
        """Read what the log gained; True if it logged a new training step."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return False
        self.offset += len(data)
        lines = (self.partial + data.decode(errors="replace")).split("\n")
        self.partial = lines.pop()  # an unfinished line waits for the rest
        stepped = False
        for line in lines:
            line = ANSI.sub("", line)
            if m := TOTAL_LINE.search(line):
                self.total = int(m.group(1))
            if m := TRAIN_LINE.search(line):
                self.step, stepped = int(m.group(1)), True
                r = RATE.search(line)
                self.rate = f", {r.group(1)} steps/s, {r.group(2)} left" if r else ""
        return stepped

    def describe(self) -> str:
        return f"step {self.step}/{self.total if self.total is not None else '?'}{self.rate}"


def launch(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start one training run, stdout and stderr into `log_path` (the tests replace this function)."""
    with log_path.open("w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish_table(name: str, table: dict[str, str], out: Path, extra: list[str], returncode: int) -> dict:
    """Read the log of a run that ended, store its result.json (atomically) and return it; RuntimeError if
    the run failed or logged no validation loss."""
    run_dir = out / "runs" / name
    log_path = run_dir / "train.log"
    parsed = parse_log(log_path.read_text(errors="replace"))
    if returncode != 0 or not parsed["train"]:
        raise RuntimeError(f"table {name}: training failed (exit {returncode}); see {log_path}")
    if not parsed["validation"]:
        raise RuntimeError(f"table {name}: no validation loss logged; enable [validation] (see {log_path})")
    result = {
        "table": table,
        "overrides": extra,
        "final_validation_loss": parsed["validation"][max(parsed["validation"])],
        "final_step": max(parsed["train"]),
        **{k: {str(s): v for s, v in d.items()} for k, d in parsed.items()},
    }
    write_text_atomic(run_dir / "result.json", json.dumps(result, indent=2))
    return result


def run_tables(
    tables: dict[str, dict[str, str]],
    config: str,
    out: Path,
    extra: list[str],
    nproc: int = 1,
    slots: Sequence[str | None] = (None,),
    on_finish: Callable[[str], object] | None = None,
    poll_s: float = 0.5,
    on_progress: Callable[[str, str], object] | None = None,
    threads_per_run: int | None = None,
) -> dict[str, dict]:
    """Train every table without a stored result, one run per slot at a time (a slot: the CUDA_VISIBLE_DEVICES
    of its runs, or None to leave the environment as it is); returns the results in the order of `tables`.
    `on_finish(name)` is called for each table as its stored result is found or its run ends; `on_progress(name,
    text)` as a run logs a training step (text: "step 20/150, 1.25 steps/s, 1m44s left"). `threads_per_run`: the
    OMP_NUM_THREADS of each run, unless the environment sets it. A failed run
    does not stop the others; the failures are raised together (TablesFailed naming their logs) once every
    run has ended. Table names (check_table_name) and stored results (UsageError if stale) are all checked
    before any run starts."""
    for name in tables:
        check_table_name(name)
    results = {name: r for name, t in tables.items() if (r := cached_result(name, t, out, extra)) is not None}
    todo = [name for name in tables if name not in results]
    if on_finish is not None:
        for name in results:
            on_finish(name)
    free, running, failed = list(slots), {}, []
    try:
        while todo or running:
            while todo and free:
                name, slot = todo.pop(0), free.pop(0)
                run_dir = out / "runs" / name
                run_dir.mkdir(parents=True, exist_ok=True)
                env = dict(os.environ)  # the machine's NCCL/CUDA settings pass through unchanged ...
                for var in LAUNCHER_VARS:  # ... but not a launcher's rank/port: each run starts its own
                    env.pop(var, None)
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                if threads_per_run is not None:
                    env.setdefault("OMP_NUM_THREADS", str(threads_per_run))
                proc = launch(train_command(run_dir, tables[name], config, extra, nproc), env, run_dir / "train.log")
                running[name] = (proc, slot, LogProgress(run_dir / "train.log"))
            ended = [name for name, (proc, _, _) in running.items() if proc.poll() is not None]
            for name, (_, _, progress) in running.items():
                if progress.poll() and on_progress is not None:
                    on_progress(name, progress.describe())
            if not ended:
                time.sleep(poll_s)
            for name in ended:
                proc, slot, _ = running.pop(name)
                free.append(slot)
                try:
                    results[name] = finish_table(name, tables[name], out, extra, proc.returncode)
                except RuntimeError as e:
                    failed.append(str(e))
                if on_finish is not None:
                    on_finish(name)
    finally:  # interrupted (Ctrl-C, an error): stop the runs still going
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()
    if failed:
        raise TablesFailed(
            f"{len(failed)} of {len(tables)} table(s) failed; the results of the others are stored, and the same "
            "command trains only the failed ones again:\n" + "\n".join(failed)
        )
    return {name: results[name] for name in tables}


def run_table(name: str, table: dict[str, str], config: str, out: Path, extra: list[str], nproc: int) -> dict:
    """Train once with `table` (skipped if its result.json exists); returns the result."""
    return run_tables({name: table}, config, out, extra, nproc)[name]


def write_online_report(out: Path, results: dict[str, dict], context: str = "") -> Path:
    from .report import _plt, plot_ranking

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        steps = sorted(r["train"], key=int)
        ax.plot([int(s) for s in steps], [r["train"][s] for s in steps], label=f"{name} (train)")
        vsteps = sorted(r["validation"], key=int)
        ax.plot([int(s) for s in vsteps], [r["validation"][s] for s in vsteps], "o--", ms=4, label=f"{name} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    scores = {n: r["final_validation_loss"] for n, r in results.items()}
    finite = {n: v for n, v in scores.items() if math.isfinite(v)}
    plot_ranking(finite, out / "ranking.png", "final validation loss")
    # a run whose loss became NaN/Inf ranks last, marked as diverged
    ranked = sorted(scores, key=lambda n: (n not in finite, finite.get(n, 0.0)))
    best = scores[ranked[0]]
    lines = ["# Online table sweep", ""] + ([context, ""] if context else [])
    lines += ["| rank | table | final validation loss | vs best | steps |", "| --- | --- | --- | --- | --- |"]
    for i, n in enumerate(ranked, 1):
        gap = f"{100 * (scores[n] / best - 1):+.2f}%" if n in finite else "diverged"
        lines.append(f"| {i} | {n} | {scores[n]:.4f} | {gap} | {results[n]['final_step']} |")
    lines += ["", "![loss curves](loss_curves.png)", "", "![ranking](ranking.png)", ""]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    return report
