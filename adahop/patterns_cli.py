"""Outlier-pattern pictures of a checkpoint (or a fresh model): `python -m adahop.patterns`.

    python -m adahop.patterns --checkpoint_path outputs/default/checkpoint/step-150 [--out DIR] [--steps 1]
    python -m adahop.patterns --job.config_file configs/default.toml [--checkpoint_path DIR] ...

Runs --steps training steps of the config's data through the converted model, labels x, W and g of
every layer (adahop.patterns.classify, the config's threshold) and draws them with the calibration
visualizer: one PNG per layer (magnitude maps with labels and scores) and summary.png (layers x tensors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .checkpoint_io import check_checkpoint, load_job_config
from .cli import UsageError, run_cli
from .patterns import DEFAULT_THRESHOLD, classify


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m adahop.patterns", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_path", default=None)
    p.add_argument("--out", default="outlier_patterns")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--max_tokens", type=int, default=4096)
    args, rest = p.parse_known_args(argv)
    if args.steps < 1 or args.max_tokens < 1:
        raise UsageError(f"--steps {args.steps} / --max_tokens {args.max_tokens}: both must be >= 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder: give a folder for the PNGs")
    if args.checkpoint_path:
        check_checkpoint(args.checkpoint_path)  # before anything is built: missing, damaged or crafted
    from .calibration import magnitude_map
    from .config import mx_config
    from .sweep.capture import capture_from_config
    from .visualize import render_patterns

    job_config = load_job_config(args.checkpoint_path, rest)
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
    files = render_patterns(maps, labels, args.out)
    print(f"[adahop] {len(files)} PNGs in {args.out} (summary: {args.out}/summary.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)
