"""The quality experiment: the same ~100M Llama trained under every recipe, then docs/quality.md.

    python scripts/quality_experiment.py [--config configs/quality_100m.toml] [--recipes bf16 adahop ...]
        [--out outputs/quality] [--parallel 2] [--gpus 0,1] [--report docs/quality.md] [--section.key value ...]

Recipes are CLI overrides of one config, so model, data, seed, schedule and token budget are shared:

| recipe | what |
| --- | --- |
| bf16 | no quantization (the converter converts nothing) |
| mxfp4 | plain MXFP4 (`none` in every slot) |
| hadamard | uniform Hadamard (IHT) in every slot |
| rht | uniform randomized Hadamard |
| adahop | calibration + the seed table |
| adahop_sr | the same with stochastic rounding of gradients |
| adahop_fa | adahop with MXFP4 attention (`enable_mxfp4_fa`: Q K^T and P V in MXFP4 too) |
| float8 | torchtitan's float8 converter (tensorwise, torchao; needs a CUDA GPU) |

Each recipe trains in <out>/<recipe> with checkpoints: an interrupted run resumes from its last checkpoint
(torchtitan does this by itself), a finished one (<out>/<recipe>/done.json) is not run again, so the
experiment can span several invocations (e.g. several leases of a GPU machine). --parallel N runs N recipes at
once (one GPU holds several 100M models); with --gpus 0,1 each run is pinned to one of the GPUs
(CUDA_VISIBLE_DEVICES) and N run on each.
Extra --section.key value arguments go to every run (e.g. --training.steps for a short try).
The report has the final training / validation loss and perplexity per recipe, the gap to BF16, the
AdaHOP plan summaries, a loss-curve plot (PNG next to the report) and the exact commands.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MX = "--quantize.linear.mx"
RECIPES = {
    "bf16": [f"{MX}.no-enable-mxfp4-linear"],
    "mxfp4": [f"{MX}.calibration.no-use-HT-calibration", f"{MX}.no-use-hadamard"],
    "hadamard": [f"{MX}.calibration.no-use-HT-calibration"],
    "rht": [f"{MX}.calibration.no-use-HT-calibration", f"{MX}.use-randomized-hadamard"],
    "adahop": [],
    "adahop_sr": [f"{MX}.use-sr-grad"],
    "adahop_fa": [f"{MX}.enable-mxfp4-fa"],
    "float8": ["--model.converters", "quantize.linear.float8"],
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:\s*([0-9.]+|nan|-?inf).*?tps:\s*([\d,]+)")
VAL = re.compile(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+|nan|-?inf)")
PLAN = re.compile(r"\[adahop\] plan \((calibration|[a-z_]+)\): (.*)$", re.M)


def _dataset_path(config: Path, extra: list[str]) -> Path | None:
    """The training text the runs read: --training.dataset_path, else the config's, else None (embedded)."""
    for i, a in enumerate(extra):
        if a == "--training.dataset_path" and i + 1 < len(extra):
            return Path(extra[i + 1])
        if a.startswith("--training.dataset_path="):
            return Path(a.split("=", 1)[1])
    import tomllib

    with open(config, "rb") as f:
        path = tomllib.load(f).get("training", {}).get("dataset_path")
    return Path(path) if path else None


def _sha256(path: Path) -> str:
    """Of the content (a .gz file's text, so that another gzip build of the same corpus matches); computed
    once per file state (every recipe's signature hashes the same ~50 MB corpus)."""
    st = path.stat()
    return _content_sha256(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _content_sha256(path: str, mtime_ns: int, size: int) -> str:
    import gzip

    path = Path(path)
    h = hashlib.sha256()
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def signature(config: str, recipe: str, extra: list[str]) -> dict:
    """What makes two runs of a recipe the same experiment: the config's text, the recipe's overrides, the
    extra overrides and the training data. Stored in done.json; a finished run with another one is refused."""
    cfg = REPO / config  # an absolute config stays itself
    data = _dataset_path(cfg, extra)
    if data is not None and not data.is_absolute():
        data = REPO / data
    return {
        "config": config,
        "config_sha256": _sha256(cfg),
        "recipe": RECIPES[recipe],
        "extra": list(extra),
        "data_sha256": _sha256(data) if data is not None and data.is_file() else "embedded",
    }


def command(config: str, recipe: str, out: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "adahop.train",
        "--job.config_file",
        config,
        "--job.dump_folder",
        str(out / recipe),
        "--metrics.disable_color_printing",
        *RECIPES[recipe],
        *extra,
    ]


def display_command(config: str, recipe: str, out: Path, extra: list[str]) -> str:
    """`command` as the report shows it ("python" for this interpreter's path)."""
    return " ".join(["python", *command(config, recipe, out, extra)[1:]])


def parse(log_text: str) -> dict:
    text = ANSI.sub("", log_text)
    train = {int(s): (float(v), int(t.replace(",", ""))) for s, v, t in TRAIN.findall(text)}
    val = {int(s): float(v) for s, v in VAL.findall(text)}
    plans = PLAN.findall(text)
    return {
        "train": {s: v for s, (v, _) in train.items()},
        "tps": {s: t for s, (_, t) in train.items()},
        "validation": val,
        "plan": plans[-1][1] if plans else None,
    }


def launch(config: str, recipe: str, out: Path, extra: list[str], gpu: str | None = None) -> subprocess.Popen:
    """Start one recipe's training (on `gpu`, a CUDA_VISIBLE_DEVICES value, if given)."""
    from adahop.sweep.online import LAUNCHER_VARS

    run_dir = out / recipe
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}  # each run its own rendezvous
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = (run_dir / "train.log").open("a")
    log.write(
        f"\n#### {time.strftime('%Y-%m-%d %H:%M:%S')} GPU {gpu} {' '.join(command(config, recipe, out, extra))}\n"
    )
    log.flush()
    with log:  # the child keeps its own descriptor
        return subprocess.Popen(
            command(config, recipe, out, extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
        )


def finish(recipe: str, out: Path, returncode: int, meta: dict | None = None) -> dict | None:
    run_dir = out / recipe
    result = parse((run_dir / "train.log").read_text(errors="replace"))
    if returncode != 0 or not result["train"]:
        print(f"[quality] {recipe}: exit {returncode}, see {run_dir / 'train.log'}", file=sys.stderr)
        return None
    result["meta"] = meta or {}
    tmp = run_dir / "done.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, run_dir / "done.json")
    return result


class StaleResult(ValueError):
    """A finished recipe's done.json was made by another experiment (config, overrides or data)."""


def load_done(config: str, recipe: str, out: Path, extra: list[str]) -> dict | None:
    done = out / recipe / "done.json"
    if not done.is_file():
        return None
    result = json.loads(done.read_text())
    stored = result.get("meta", {}).get("signature")
    now = signature(config, recipe, extra)
    if stored != now:
        differs = sorted(k for k in now if stored is None or stored.get(k) != now[k])
        detail = "; ".join(f"{k}: stored {(stored or {}).get(k)!r}, now {now[k]!r}" for k in differs)
        raise StaleResult(
            f"{done} was written by another experiment (differs in: {', '.join(differs)}; "
            f"{detail}); move it away to run {recipe} again, or use another --out (or, for "
            "--report-only, pass the runs' own extra overrides)"
        )
    return result


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def run_all(config: str, recipes: list[str], out: Path, extra: list[str], slots: list[str | None]) -> dict[str, dict]:
    """Train every recipe without a done.json, len(slots) at a time; a slot is the CUDA_VISIBLE_DEVICES
    value its runs get (None: not pinned)."""
    results, todo, running = {}, [], {}
    for r in recipes:
        done = load_done(config, r, out, extra)  # every stored result checked before anything trains
        if done is not None:
            results[r] = done
        else:
            todo.append(r)
    free = list(slots)
    while todo or running:
        while todo and free:
            r, slot = todo.pop(0), free.pop(0)
            print(f"[quality] start {r}" + (f" on GPU {slot}" if slot is not None else ""), file=sys.stderr)
            running[r] = (launch(config, r, out, extra, slot), slot, time.time())
        time.sleep(2)
        for r, (proc, slot, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[r]
                free.append(slot)
                meta = {
                    "signature": signature(config, r, extra),
                    "device": _device_name(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "wall_s": round(time.time() - t0),
                    "command": display_command(config, r, out, extra),
                }
                res = finish(r, out, proc.returncode, meta)
                if res is not None:
                    results[r] = res
                    print(f"[quality] done {r}", file=sys.stderr)
    return results


def _last(d: dict):
    return d[max(d, key=int)] if d else math.nan


def _plot(results: dict[str, dict], png: Path) -> None:
    """Training and validation loss curves of every finished recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {int(s): v for s, v in results["bf16"]["validation"].items()} if "bf16" in results else {}
    fig, axes = plt.subplots(1, 3 if base else 2, figsize=(18 if base else 12, 4.5))
    a1, a2 = axes[0], axes[1]
    for r, res in results.items():
        tr = sorted((int(s), v) for s, v in res["train"].items())
        va = sorted((int(s), v) for s, v in res["validation"].items())
        a1.plot([s for s, _ in tr], [v for _, v in tr], label=r, lw=1)
        a2.plot([s for s, _ in va], [v for _, v in va], "o-", ms=3, label=r)
        if base:  # the curves lie within 1% of each other: the gap is what can be read
            gap = [(s, 100 * (v / base[s] - 1)) for s, v in va if s in base and s > 1]
            axes[2].plot([s for s, _ in gap], [g for _, g in gap], "o-", ms=3, label=r)
    titles = [(a1, "training loss"), (a2, "validation loss (held-out Wikipedia)")]
    if base:
        titles.append((axes[2], "validation loss gap to BF16 (%)"))
    for ax, title in titles:
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def write_report(
    path: Path,
    results: dict[str, dict],
    commands: dict[str, str],
    device: str,
    pending: list[str] = (),
    notes: Path | None = None,
) -> None:
    png = path.with_suffix(".png")
    if results:
        _plot(results, png)
    base = _last(results["bf16"]["validation"]) if "bf16" in results else math.nan
    lines = [
        "# Quality: BF16 vs MXFP4 recipes on real text",
        "",
        f"Written by `scripts/quality_experiment.py` on {time.strftime('%Y-%m-%d')} from the finished recipes "
        f"(this machine: {device}; each run's own device and date are in the table).",
        "",
        "| recipe | steps | final train loss | last val loss (step) | val perplexity | val gap to BF16 "
        "| best val loss (step) | tokens/s (last log) | device, date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r, res in results.items():
        v = _last(res["validation"])
        v_step = max((int(s) for s in res["validation"]), default="-")  # validation.freq need not divide steps
        gap = f"{100 * (v / base - 1):+.2f}%" if base == base and v == v else "-"
        steps = max((int(s) for s in res["train"]), default=0)
        finite = {int(s): x for s, x in res["validation"].items() if x == x}
        best = f"{min(finite.values()):.4f} ({min(finite, key=finite.get)})" if finite else "-"
        meta = res.get("meta", {})
        lines.append(
            f"| {r} | {steps} | {_last(res['train']):.4f} | {v:.4f} ({v_step}) | "
            f"{math.exp(v) if v == v else math.nan:.2f} | "
            f"{gap} | {best} | {_last(res['tps']) if res['tps'] else '-'} | "
            f"{meta.get('device', '?')}, {meta.get('date', '?')} |"
        )
    if pending:
        lines += ["", f"Not finished yet: {', '.join(pending)}."]
    lines += (["", f"![loss curves]({png.name})"] if results else []) + ["", "## AdaHOP plans", ""]
    lines += [f"- {r}: {res['plan']}" for r, res in results.items() if res.get("plan")]
    lines += ["", "## Commands", ""] + [f"- {r}: `{c}`" for r, c in commands.items()] + [""]
    if notes is not None and notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quality_100m.toml")
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--out", default="outputs/quality")
    p.add_argument("--parallel", type=int, default=1, help="recipes at once (without --gpus: not pinned)")
    p.add_argument("--gpus", default="", help="e.g. 0,1: pin runs to these GPUs, --parallel runs on each")
    p.add_argument("--report", default="docs/quality.md")
    p.add_argument("--device", default=None, help="device description for the report (default: detected)")
    p.add_argument(
        "--notes",
        default="docs/quality/notes.md",
        help="markdown appended to the report as it is (what the runs showed; skipped if missing)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report from the recipes that have a done.json",
    )
    args, extra = p.parse_known_args(argv)
    requested = list(args.recipes)
    out = Path(args.out)
    # only training float8 needs the GPU; a finished float8 run is read like any other
    if "float8" in args.recipes and not (args.report_only or (out / "float8" / "done.json").is_file()):
        import torch

        if not torch.cuda.is_available():
            print("[quality] float8 needs a CUDA GPU and torchao: left out of this run", file=sys.stderr)
            args.recipes = [r for r in args.recipes if r != "float8"]
    if args.parallel < 1:
        print(f"[quality] --parallel {args.parallel}: must be >= 1", file=sys.stderr)
        return 2
    if args.gpus:
        from adahop.sweep.online import gpu_slots

        try:
            gpus = gpu_slots(args.gpus, 1, 1)
        except ValueError as e:
            print(f"[quality] {e}", file=sys.stderr)
            return 2
        slots = [g for _ in range(args.parallel) for g in gpus]  # spread over the GPUs first
    else:
        slots = [None] * args.parallel
    if args.report_only:
        slots = []  # nothing is started; finished recipes are read
        args.recipes = [r for r in args.recipes if (out / r / "done.json").is_file()]
    try:
        results = run_all(args.config, args.recipes, out, extra, slots)
    except StaleResult as e:
        print(f"[quality] {e}", file=sys.stderr)
        return 2
    if not results and not args.report_only:
        print("[quality] no recipe finished", file=sys.stderr)
        return 1
    device = args.device or _device_name()
    commands = {
        r: res.get("meta", {}).get("command") or display_command(args.config, r, out, extra)
        for r, res in results.items()
    }
    write_report(
        Path(args.report),
        results,
        commands,
        device,
        [r for r in requested if r not in results],
        Path(args.notes) if args.notes else None,
    )
    print(f"[quality] report: {args.report}" + ("" if results else " (no recipe finished yet)"))
    return 0 if len(results) == len(args.recipes) else 1


if __name__ == "__main__":
    sys.exit(main())
