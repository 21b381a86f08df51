"""Where the host's time goes in an AdaHOP training step: cProfile of forward+backward of the config's model.

    python scripts/host_profile.py --job.config_file configs/llama1b_adahop.toml [--batch 1] [--seq 2048]
        [--steps 3] [--rows 60]

Every slot runs hadamard (no calibration), plain bf16 parameters, the deferred deficient-block check as the
trainer runs it. A small batch keeps the GPU out of the way, so the profile is the host's cost per step
(Python, Triton launches, aten dispatch). Prints the functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from adahop.cli import exit_on_removed_switches
from adahop.titan import setup

setup()

from profile_step import build, step_fn, timed  # noqa: E402  (scripts/ is on sys.path when run as a script)

from adahop.checkpoint_io import load_job_config  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=60)
    args, rest = p.parse_known_args()
    exit_on_removed_switches()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    job = load_job_config(None, rest)
    job.quantize.linear.mx.calibration.use_HT_calibration = False
    model, margs = build(job, device, convert=True, fsdp=False)
    tokens = torch.randint(0, margs.vocab_size, (args.batch, args.seq), device=device)
    run = step_fn(model, tokens, torch.device(device))
    print(f"ms / step (timed, {args.steps} steps): {1e3 * timed(run, args.steps, sync):.1f}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        run()
    sync()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(args.rows)
    stats.sort_stats("cumulative").print_stats(args.rows)


if __name__ == "__main__":
    main()
