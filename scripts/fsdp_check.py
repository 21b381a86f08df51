"""Report of scripts/gpu.sh fsdp: throughput and memory per GPU, scaling, plan agreement across
ranks, 1-GPU vs 2-GPU losses at the same global batch, exact resume, resume on another GPU count.

    python scripts/fsdp_check.py LOG_DIR [--half 15] [--cal 10]

Reads LOG_DIR/train_<run>.log (torchrun output, lines of rank r prefixed "[rank<r>]:") and exits.txt.
"""

import argparse
import re
from pathlib import Path

from summarize_runs import ANSI, TRAIN, VAL

RANK = re.compile(r"^\[rank(\d+)\]:")
DIGEST = re.compile(r"\[adahop\] plan digest ([0-9a-f]+)")
NGPU = {"bf16_1gpu": 1, "adahop_1gpu": 1, "bf16_2gpu": 2, "adahop_2gpu": 2, "adahop_resume": 2, "one_resumed": 1}


def read_run(path: Path) -> dict:
    """Per-rank training records {rank: {step: (loss, mem, tps)}}, validation losses and plan digests."""
    recs, val, digests = {}, {}, {}
    if not path.is_file():
        return {"recs": recs, "val": val, "digests": digests, "text": ""}
    text = ANSI.sub("", path.read_text(errors="replace"))
    for line in text.splitlines():
        m = RANK.match(line)
        rank = int(m.group(1)) if m else 0
        if d := DIGEST.search(line):
            digests.setdefault(rank, []).append(d.group(1))
        elif v := VAL.search(line):
            val.setdefault(rank, {})[int(v.group(1))] = float(v.group(2))
        elif t := TRAIN.search(line):
            s, loss, mem, tps = t.groups()
            recs.setdefault(rank, {})[int(s)] = (float(loss), float(mem), int(tps.replace(",", "")))
    return {"recs": recs, "val": val, "digests": digests, "text": text}


def diffs(a: dict, b: dict, steps) -> str:
    common = [s for s in steps if s in a and s in b]
    if not common:
        return "no common steps"
    d = [abs(a[s][0] - b[s][0]) for s in common]
    return f"steps {common[0]}-{common[-1]}: max |diff| {max(d):.4f}, mean {sum(d) / len(d):.4f}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("log_dir")
    p.add_argument("--half", type=int, default=15)
    p.add_argument("--cal", type=int, default=10)
    a = p.parse_args()
    logs = Path(a.log_dir)
    runs = {n: read_run(logs / f"train_{n}.log") for n in [*NGPU, "one_refused"]}
    print("# FSDP on 2 GPUs (scripts/gpu.sh fsdp)\n")
    if (logs / "exits.txt").is_file():
        print("```\n" + (logs / "exits.txt").read_text().strip() + "\n```\n")
    after = a.cal + 5
    print(f"Tokens/s per GPU: mean of the rank-0 log lines after step {after}; total = per GPU x GPUs.\n")
    print(
        "| run | GPUs | local batch | steps | tokens/s per GPU | total tokens/s "
        "| peak memory GiB (rank 0) | loss, last step | validation loss |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    total = {}
    for name, n in NGPU.items():
        r0 = runs[name]["recs"].get(0, {})
        if not r0:
            print(f"| {name} | {n} | - | - | - | - | - | - | - |")
            continue
        late = [v for s, v in r0.items() if s > after] or [r0[max(r0)]]
        tps = sum(v[2] for v in late) / len(late)
        total[name] = tps * n
        vals = runs[name]["val"].get(0, {})
        print(
            f"| {name} | {n} | {8 // n} | {max(r0)} | {tps:.0f} | {tps * n:.0f} | "
            f"{max(v[1] for v in r0.values()):.2f} | "
            f"{r0[max(r0)][0]:.4f} | {vals[max(vals)] if vals else float('nan'):.4f} |"
        )
    print()
    for kind in ("bf16", "adahop"):
        if f"{kind}_1gpu" in total and f"{kind}_2gpu" in total:
            print(
                f"- scaling {kind}, 1 -> 2 GPUs at the same global batch: "
                f"{total[f'{kind}_2gpu'] / total[f'{kind}_1gpu']:.2f}x total tokens/s"
            )
    for n in ("1gpu", "2gpu"):
        if f"adahop_{n}" in total and f"bf16_{n}" in total:
            print(f"- AdaHOP vs BF16 on {n}: {total[f'adahop_{n}'] / total[f'bf16_{n}']:.2f}x tokens/s")
    print()
    d2 = runs["adahop_2gpu"]["digests"]
    print(
        f"- plan digests, adahop_2gpu, per rank: {d2}; identical across ranks: "
        f"{len({v[-1] for v in d2.values()}) == 1 and len(d2) == 2}"
    )
    for name in ("adahop_resume", "one_resumed", "adahop_1gpu"):
        print(f"- plan digests, {name}: {runs[name]['digests']}")
    steps = range(1, 2 * a.half + 1)
    for kind in ("bf16", "adahop"):
        print(
            f"- loss, {kind} 1 GPU x 8 vs 2 GPUs x 4: "
            f"{diffs(runs[f'{kind}_1gpu']['recs'].get(0, {}), runs[f'{kind}_2gpu']['recs'].get(0, {}), steps)}"
        )
    base = runs["adahop_2gpu"]["recs"].get(0, {})
    print(
        f"- resume on 2 GPUs from step {a.half} vs uninterrupted: "
        f"{diffs(runs['adahop_resume']['recs'].get(0, {}), base, range(a.half + 1, 2 * a.half + 1))}"
    )
    r1 = runs["adahop_2gpu"]["recs"].get(1, {})
    print(f"- rank 1 vs rank 0 logged loss, adahop_2gpu: {diffs(base, r1, steps)}")
    refused = runs["one_refused"]["text"]
    err = [ln for ln in refused.splitlines() if "ConfigError" in ln or "invalid config" in ln]
    print(
        f"- 2-GPU checkpoint resumed on 1 GPU: {'refused: ' + err[-1].strip() if err else 'NOT refused'}"
        f"; training steps logged: {len(runs['one_refused']['recs'].get(0, {}))}"
    )
    print(
        f"- ... with --checkpoint.exclude_from_loading dataloader: "
        f"{diffs(runs['one_resumed']['recs'].get(0, {}), base, range(a.half + 1, a.half + 6))} "
        "(vs the 2-GPU run; other data)"
    )
    for name in NGPU:
        r0 = runs[name]["recs"].get(0, {})
        if r0:
            print(f"\nloss curve {name}: " + " ".join(f"{s}:{v[0]:.3f}" for s, v in sorted(r0.items())))


if __name__ == "__main__":
    main()
