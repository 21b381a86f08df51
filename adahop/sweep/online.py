"""Online table sweep: one short training run per table, ranked by final validation loss.

Each run is `python -m adahop.train` (or torchrun with --nproc) on the same config, with the table given
key by key as CLI overrides of [quantize.linear.mx.calibration.layer_transform_config], in its own
dump folder <out>/runs/<table>. A run that finished leaves result.json there and is not run again, so an
interrupted sweep resumes where it stopped. Runs go one after another (several GPUs: --nproc per run).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from ..modes import PAIR_KEYS

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN_LINE = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:\s*([0-9.]+|nan|-?inf)")
VAL_LINE = re.compile(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+|nan|-?inf)")
KEY = "--quantize.linear.mx.calibration.layer_transform_config"


def table_args(table: dict[str, str]) -> list[str]:
    return [a for k in PAIR_KEYS for a in (f"{KEY}.{k}", table[k])]


def parse_log(text: str) -> dict:
    text = ANSI.sub("", text)
    train = {int(s): float(v) for s, v in TRAIN_LINE.findall(text)}
    val = {int(s): float(v) for s, v in VAL_LINE.findall(text)}
    return {"train": train, "validation": val}


def run_table(name: str, table: dict[str, str], config: str, out: Path, extra: list[str], nproc: int) -> dict:
    """Train once with `table` (skipped if its result.json exists); returns the result."""
    run_dir = out / "runs" / name
    result_file = run_dir / "result.json"
    if result_file.is_file():
        cached = json.loads(result_file.read_text())
        if cached.get("table") != table or cached.get("overrides") != extra:
            raise ValueError(
                f"{run_dir} holds the result of a different table or different overrides than table {name!r} "
                "now has: use another --out, or delete that folder to train it again"
            )
        return cached
    run_dir.mkdir(parents=True, exist_ok=True)
    train = ["-m", "adahop.train", "--job.config_file", config, "--job.dump_folder", str(run_dir),
             "--metrics.disable_color_printing", *table_args(table), *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv_backend",
               "c10d", "--rdzv_endpoint", "localhost:0", "--local-ranks-filter", "0", "--role", "rank", "--tee", "3",
               *train]
    else:
        cmd = [sys.executable, *train]
    log_path = run_dir / "train.log"
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    parsed = parse_log(log_path.read_text(errors="replace"))
    if proc.returncode != 0 or not parsed["train"]:
        raise RuntimeError(f"table {name}: training failed (exit {proc.returncode}); see {log_path}")
    if not parsed["validation"]:
        raise RuntimeError(f"table {name}: no validation loss logged; enable [validation] (see {log_path})")
    last = max(parsed["validation"])
    result = {
        "table": table,
        "overrides": extra,
        "final_validation_loss": parsed["validation"][last],
        "final_step": max(parsed["train"]),
        **{k: {str(s): v for s, v in d.items()} for k, d in parsed.items()},
    }
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, result_file)
    return result


def write_online_report(out: Path, results: dict[str, dict], context: str = "") -> Path:
    from .report import _atomic_write, _plt, plot_ranking

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
    _atomic_write(report, "\n".join(lines))
    _atomic_write(out / "results.json", json.dumps(results, indent=2))
    return report
