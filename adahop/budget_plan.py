"""Same-budget baseline plans: `python -m adahop.budget_plan`.

A calibrated AdaHOP plan runs some GEMM slots in BF16 (`full_precision`). To ask whether its choice of slots is
what helps, compare it with uniform Hadamard given exactly as many BF16 slots, placed by a rule that needs no
calibration:

    python -m adahop.budget_plan --like outputs/run/adahop_plan.json --rule weight_gradients_first --out wgrad.json
    python -m adahop.budget_plan --like outputs/run/adahop_plan.json --rule edges_inward --out edges.json
    python -m adahop.budget_plan --like outputs/run/adahop_plan.json --rule random --seed 0 --out random.json

Rules (`RULES`), each taking slots in order until the budget is spent:
- weight_gradients_first: every layer's weight-gradient GEMM (backward_gw), first layer to last, then the input
  gradients (backward_gx), then the forward GEMMs;
- edges_inward: every slot of the first and the last block, then of the next blocks inward (layers outside a
  numbered block come last);
- random: slots drawn uniformly with --seed.

The plan names the same layers as --like and trains with
`--quantize.linear.mx.calibration.plan_file <out>` (no calibration). --count sets another budget; --mode another
mode for the other slots.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time

from .calibration import PLAN_VERSION, summarize_modes, write_json_atomic
from .cli import ArgumentParser, UsageError, run_cli
from .modes import FULL_PRECISION, HADAMARD, MODES, SLOTS

RULES = ("weight_gradients_first", "edges_inward", "random")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _block(fqn: str) -> int | None:
    m = _BLOCK.search(fqn)
    return int(m.group(1)) if m else None


def ordered_slots(fqns: list[str], rule: str, seed: int = 0) -> list[tuple[str, str]]:
    """Every (layer, slot) of `fqns` in the order `rule` spends the BF16 budget on them."""
    slots = [(f, s) for f in fqns for s in SLOTS]
    if rule == "weight_gradients_first":
        rank = {"backward_gw": 0, "backward_gx": 1, "forward_y": 2}
        return sorted(slots, key=lambda fs: rank[fs[1]])  # stable: layer order within each slot kind
    if rule == "edges_inward":
        blocks = sorted({b for b in map(_block, fqns) if b is not None})
        inward = []
        while blocks:
            inward.append(blocks.pop(0))
            if blocks:
                inward.append(blocks.pop())
        position = {b: i for i, b in enumerate(inward)}
        return sorted(slots, key=lambda fs: position.get(_block(fs[0]), len(position)))
    if rule == "random":
        return random.Random(seed).sample(slots, len(slots))
    raise ValueError(f"rule {rule!r}: expected one of {', '.join(RULES)}")


def budget_plan(fqns: list[str], count: int, rule: str, seed: int = 0, mode: str = HADAMARD, like: str = "") -> dict:
    """A plan (the schema of adahop_plan.json) with `count` slots of `fqns` in full_precision, chosen by `rule`,
    and every other slot in `mode`."""
    if mode not in MODES or mode == FULL_PRECISION:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(m for m in MODES if m != FULL_PRECISION)}")
    total = len(fqns) * len(SLOTS)
    if not 0 <= count <= total:
        raise ValueError(f"count {count}: the plan has {total} slots ({len(fqns)} layers x {len(SLOTS)})")
    layers = {f: {"labels": None, "pair_keys": None, "modes": dict.fromkeys(SLOTS, mode)} for f in fqns}
    for fqn, slot in ordered_slots(fqns, rule, seed)[:count]:
        layers[fqn]["modes"][slot] = FULL_PRECISION
    return {
        "version": PLAN_VERSION,
        "source": f"budget:{rule}" + (f":seed={seed}" if rule == "random" else ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "calibration_steps": 0,
        "uniform_mode": mode,
        "budget": {"rule": rule, "seed": seed, "full_precision_slots": count, "like": like},
        "layers": layers,
        "summary": summarize_modes(layers),
    }


def _read_plan(path: str) -> dict:
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSON syntax and text that is not UTF-8
        raise UsageError(f"--like {path}: not a readable adahop_plan.json ({e})") from None
    layers = plan.get("layers") if isinstance(plan, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise UsageError(f"--like {path}: an adahop_plan.json has a non-empty 'layers' table; this file has none")
    for fqn, entry in layers.items():
        modes = entry.get("modes") if isinstance(entry, dict) else None
        if not isinstance(modes, dict) or any(modes.get(s) not in MODES for s in SLOTS):
            raise UsageError(f"--like {path}: layers.{fqn} has no valid 'modes' ({', '.join(SLOTS)})")
    return plan


def _main(argv: list[str] | None) -> int:
    p = ArgumentParser(
        prog="python -m adahop.budget_plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--like", required=True, help="the plan whose layers and BF16 budget to match (adahop_plan.json)")
    p.add_argument("--rule", required=True, choices=RULES)
    p.add_argument("--out", required=True, help="the plan to write (an existing file is not replaced)")
    p.add_argument("--seed", type=int, default=0, help="the random rule's seed")
    p.add_argument("--count", type=int, default=None, help="BF16 slots (default: as many as --like has)")
    p.add_argument("--mode", default=HADAMARD, help="the mode of every other slot (default: hadamard)")
    args = p.parse_args(argv)
    if not args.out or args.out.endswith(os.sep) or os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r}: a file name is needed (a new .json file)")
    if os.path.lexists(args.out):
        raise UsageError(f"--out {args.out} exists: give a new file name (nothing is overwritten)")
    if args.mode not in MODES or args.mode == FULL_PRECISION:
        allowed = ", ".join(m for m in MODES if m != FULL_PRECISION)
        raise UsageError(f"--mode {args.mode!r}: allowed {allowed}")
    like = _read_plan(args.like)
    fqns = list(like["layers"])
    count = summarize_modes(like["layers"]).get(FULL_PRECISION, 0) if args.count is None else args.count
    if not 0 <= count <= len(fqns) * len(SLOTS):
        raise UsageError(f"--count {count}: between 0 and the plan's {len(fqns) * len(SLOTS)} slots")
    plan = budget_plan(fqns, count, args.rule, args.seed, args.mode, like=args.like)
    try:
        write_json_atomic(args.out, plan)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot be written ({e.strerror or e}); give a writable place") from None
    print(
        f"[adahop] {args.out}: {count} of {len(fqns) * len(SLOTS)} slots in full_precision ({args.rule}), the rest "
        f"{args.mode}; train with --quantize.linear.mx.calibration.plan_file {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
