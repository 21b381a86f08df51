"""Table sweeps from the command line.

    python -m adahop.sweep --job.config_file configs/default.toml --tables configs/sweep/tables.toml \
        [--checkpoint_path DIR] [--steps 2] [--max_tokens 4096] [--out sweep_out] [--allow_full_precision]
    python -m adahop.sweep --online --job.config_file configs/default.toml --tables configs/sweep/tables.toml \
        [--out sweep_out] [--nproc N] [--gpus 0,1,2,3 | --parallel N] [--section.key value ...]
        (the --section.key overrides go to every training run)

A tables file (configs/sweep/tables.toml holds four) names pattern-pair -> mode tables, each complete (all nine
keys); a name is a folder name (letters, digits, '_', '-', '.'; starting with a letter or digit):

    [tables.seed]
    "row-row" = "hadamard"
    ...

Offline: builds the config's model (weights from --checkpoint_path, else a fresh initialization), converts it,
runs --steps forward/backward steps on the config's training data while capturing x, W and g of every
converted layer, then scores every table by the quantization error of each layer's three GEMMs
(adahop.sweep.offline) and writes report.md, results.json and PNG plots to --out.
Online: one short training run per table (adahop.sweep.online), resumable, ranked by final validation
loss, with loss curves. Each run has --nproc ranks (torchrun when > 1). By default the runs go one after
another; --gpus 0,1,2,3 splits the GPUs into groups of --nproc and trains one table per group at once, each
run seeing only its group (CUDA_VISIBLE_DEVICES; the rest of the environment, NCCL settings included, is passed
through as it is); --parallel N trains N tables at once without GPU pinning (default: on CPU, as many as the
cores give 2 threads each; with a GPU, 1). Each run's steps are shown as it logs them (step, steps/s, time left).
A failed run does not stop the others: the finished ones are stored, the failures are reported at the end, and
the same command trains only those again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..checkpoint_io import check_checkpoint, load_job_config
from ..cli import UsageError, run_cli
from ..modes import MODES
from ..patterns import DEFAULT_THRESHOLD
from .capture import capture_from_config
from .offline import DEFAULT_ALLOWED, best_table, check_table, measure_layers
from .online import TablesFailed, check_table_name
from .report import write_offline_report


def load_tables(path: str) -> dict[str, dict[str, str]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--tables {path}: no such file")
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--tables {path}: not a valid TOML file ({e})") from None
    tables = data.get("tables")
    if not isinstance(tables, dict) or not tables:
        raise UsageError(f"--tables {path}: expected one or more [tables.<name>] sections")
    for name in tables:
        check_table_name(name, f"--tables {path}")
    return {name: check_table(t, name=f"{path}: tables.{name}") for name, t in tables.items()}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def online(args, tables: dict[str, dict[str, str]], rest: list[str]) -> int:
    import torch
    from tqdm import tqdm

    from .online import auto_parallel, gpu_slots, run_tables, write_online_report

    has_gpu = torch.cuda.is_available()
    parallel = args.parallel
    if parallel is None:
        parallel = 1 if args.gpus else auto_parallel(args.nproc, len(tables), usable_cores(), has_gpu)
    slots = gpu_slots(args.gpus, args.nproc, parallel)  # checked before anything is trained
    # CPU runs side by side share the cores (torch would give each run all of them)
    threads = None if has_gpu else max(1, usable_cores() // (len(slots) * args.nproc))

    i = rest.index("--job.config_file") if "--job.config_file" in rest[:-1] else -1
    config = rest[i + 1] if i >= 0 else None
    if config is None or not Path(config).is_file():
        raise UsageError(f"--online needs --job.config_file of an existing TOML, got {config!r}")
    extra = rest[:i] + rest[i + 2 :]  # every other override goes to each training run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"[adahop] {len(tables)} tables, {len(slots)} at a time; logs in {out / 'runs'}/<table>/train.log",
        file=sys.stderr,
    )
    with tqdm(total=len(tables), desc="tables", file=sys.stderr) as bar:
        results = run_tables(
            tables,
            config,
            out,
            extra,
            args.nproc,
            slots,
            on_finish=lambda name: bar.update(1),
            on_progress=lambda name, text: tqdm.write(f"[adahop] {name}: {text}", file=sys.stderr),
            threads_per_run=threads,
        )
    report = write_online_report(out, results, context=f"Config {config}, overrides {extra or 'none'}.")
    print(report.read_text().split("![")[0])
    print(f"[adahop] sweep report: {report}")
    return 0


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adahop.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tables", required=True, help="TOML file with [tables.<name>] sections")
    p.add_argument("--checkpoint_path", default=None, help="DCP step folder to take the weights from")
    p.add_argument("--steps", type=int, default=2, help="forward/backward steps to capture operands from")
    p.add_argument("--max_tokens", type=int, default=4096, help="token rows of x and g kept per layer")
    p.add_argument("--out", default="sweep_out")
    p.add_argument("--allow_full_precision", action="store_true", help="let the best table use full_precision")
    p.add_argument("--min_gain", type=float, default=0.10, help="error cut a costlier mode must bring")
    p.add_argument("--online", action="store_true", help="rank tables by short training runs instead")
    p.add_argument("--nproc", type=int, default=1, help="online: ranks per training run (torchrun)")
    p.add_argument(
        "--gpus",
        default="",
        help="online: GPU ids (0,1,2,3), split into groups of --nproc, one "
        "table per group at once (default: no pinning; see --parallel)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="online: training runs at once without GPU pinning "
        "(default: on CPU, as many as the cores give 2 threads each; with a GPU, 1)",
    )
    args, rest = p.parse_known_args(argv)
    if not args.online and (args.gpus or args.parallel is not None):
        raise UsageError("--gpus and --parallel only apply to --online")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder: give a folder for the sweep's report and runs")
    tables = load_tables(args.tables)
    if args.online:
        return online(args, tables, rest)
    if args.steps < 1 or args.max_tokens < 1:
        raise UsageError(f"--steps {args.steps} / --max_tokens {args.max_tokens}: both must be >= 1")
    if not 0 <= args.min_gain < 1:
        raise UsageError(f"--min_gain {args.min_gain}: must be in [0, 1) (a fraction of a key's summed error)")
    if args.checkpoint_path:
        check_checkpoint(args.checkpoint_path)  # before anything is built: missing, damaged or crafted
    job_config = load_job_config(args.checkpoint_path, rest)
    from ..config import mx_config, resolved_table

    mx = mx_config(job_config)
    captured = capture_from_config(job_config, args.checkpoint_path, args.steps, args.max_tokens)
    from tqdm import tqdm

    measured = measure_layers(
        captured,
        threshold=mx.calibration.pattern_threshold or DEFAULT_THRESHOLD,
        recipe_kwargs={"outlier_k": int(mx.outlier_k), "hadamard_size": int(mx.hadamard_size)},
        progress=lambda it: tqdm(it, desc="layers x modes", file=sys.stderr),
    )
    allowed = MODES if args.allow_full_precision else DEFAULT_ALLOWED
    best, unseen = best_table(measured, resolved_table(mx), allowed, args.min_gain)
    source = f"checkpoint {args.checkpoint_path}" if args.checkpoint_path else "a fresh initialization"
    report = write_offline_report(
        args.out,
        measured,
        tables,
        best,
        unseen,
        context=f"Model {job_config.model.name}/{job_config.model.flavor} from {source}; operands of "
        f"{args.steps} training step(s), up to {args.max_tokens} tokens per layer.",
        allowed=tuple(allowed),
    )
    print(report.read_text().split("## Best table found")[0])
    print(f"[adahop] sweep report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, errors=(TablesFailed,))


if __name__ == "__main__":
    sys.exit(main())
