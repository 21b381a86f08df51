"""Outlier-pattern pictures of a checkpoint (or a fresh model): `python -m adahop.patterns`.

    python -m adahop.patterns --checkpoint_path outputs/default/checkpoint/step-150 [--out DIR] [--steps 1]
    python -m adahop.patterns --job.config_file configs/default.toml [--checkpoint_path DIR] ...

Runs --steps training steps of the config's data through the converted model, labels x, W and g of
every layer (adahop.patterns.classify, the config's threshold) and draws them with the calibration
visualizer: one PNG per layer (magnitude maps with labels and scores) and summary.png (layers x tensors).
Default --out: next to the checkpoint, <run>/checkpoint/outlier_patterns/step-N; without a checkpoint,
<job.dump_folder>/outlier_patterns/init (a fresh initialization).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .checkpoint_io import check_checkpoint, load_job_config
from .cli import UsageError, run_cli
from .patterns import DEFAULT_THRESHOLD, classify


def default_out(checkpoint_path: str | None, dump_folder: str) -> Path:
    """Where the PNGs go without --out: beside the step folder, in <checkpoint folder>/outlier_patterns/<step-N>
    (not a step-N name directly in the checkpoint folder: torchtitan counts and purges those as checkpoints);
    for a fresh model, <dump_folder>/outlier_patterns/init (beside calibration's own pictures, no name shared)."""
    if checkpoint_path:
        step_dir = Path(checkpoint_path).resolve()
        return step_dir.parent / "outlier_patterns" / step_dir.name
    return Path(dump_folder) / "outlier_patterns" / "init"


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adahop.patterns", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint_path", default=None)
    p.add_argument(
        "--out",
        default=None,
        help="folder for the PNGs (default: next to the checkpoint, "
        "<run>/checkpoint/outlier_patterns/step-N; without one, <job.dump_folder>/outlier_patterns/init)",
    )
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--max_tokens", type=int, default=4096)
    args, rest = p.parse_known_args(argv)
    if args.steps < 1 or args.max_tokens < 1:
        raise UsageError(f"--steps {args.steps} / --max_tokens {args.max_tokens}: both must be >= 1")
    if args.checkpoint_path:
        check_checkpoint(args.checkpoint_path)  # before anything is built: missing, damaged or crafted
    from .calibration import magnitude_map
    from .config import mx_config
    from .sweep.capture import capture_from_config
    from .visualize import render_patterns

    job_config = load_job_config(args.checkpoint_path, rest)
    out = Path(args.out) if args.out else default_out(args.checkpoint_path, job_config.job.dump_folder)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give a folder for the PNGs")
    cal = mx_config(job_config).calibration
    threshold = cal.pattern_threshold or DEFAULT_THRESHOLD
    captured = capture_from_config(job_config, args.checkpoint_path, args.steps, args.max_tokens)
    maps, labels = {}, {}
    for fqn, cap in captured.items():
        tensors = {"x": torch.cat(cap.x), "w": cap.w, "g": torch.cat(cap.g)}
        maps[fqn] = {n: magnitude_map(t, int(cal.visualization_max_pixels)) for n, t in tensors.items()}
        labels[fqn] = {}
        for n, t in tensors.items():
            r = classify(t, threshold)
            labels[fqn][n] = {"label": r.label, "row_score": r.row_score, "col_score": r.col_score}
    files = render_patterns(maps, labels, out)
    print(f"[adahop] {len(files)} PNGs in {out} (summary: {out / 'summary.png'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)
