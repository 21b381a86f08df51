"""Table of training runs from their torchtitan logs: tokens/s, peak memory, losses, vs the first run.

    python scripts/summarize_runs.py LOG_DIR NAME [NAME ...] [--after STEP] [--until STEP]

Reads LOG_DIR/train_<NAME>.log; tokens/s is the mean of the log lines after step --after (up to --until); "steps
redone" lists the steps the trainer ran again exactly (a block the fp8 form could not hold). Peak memory is the
largest logged over the whole run, and over the steps after --after (AdaHOP's eager calibration steps, which
keep more activations, left out; the trainer logs their own peak).
"""

import argparse
import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN = re.compile(r"(?<!validate )step:\s*(\d+)\s.*?loss:\s*([\d.]+).*?memory:\s*([\d.]+)GiB.*?tps:\s*([\d,]+)")
VAL = re.compile(r"validate step:\s*(\d+)\s.*?loss:\s*([\d.]+)")
REDONE = re.compile(r"\[adahop\] step (\d+): .*running the step again")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("log_dir")
    p.add_argument("names", nargs="+")
    p.add_argument("--after", type=int, default=35)
    p.add_argument("--until", type=int, default=None, help="leave out log lines after this step (e.g. a profiled one)")
    a = p.parse_args()
    rows = {}
    for name in a.names:
        try:
            text = ANSI.sub("", open(f"{a.log_dir}/train_{name}.log", errors="replace").read())
        except OSError:
            continue
        recs = [(int(s), float(loss), float(m), int(t.replace(",", ""))) for s, loss, m, t in TRAIN.findall(text)]
        if not recs:
            continue
        late = [r for r in recs if r[0] > a.after and (a.until is None or r[0] <= a.until)] or recs[-1:]
        vals = VAL.findall(text)
        rows[name] = dict(
            tps=sum(r[3] for r in late) / len(late),
            mem=max(r[2] for r in recs),
            mem_late=max(r[2] for r in late),
            last=recs[-1][0],
            loss=recs[-1][1],
            val=float(vals[-1][1]) if vals else float("nan"),
            redone=" ".join(REDONE.findall(text)),
            curve=" ".join(f"{s}:{loss:.2f}" for s, loss, _, _ in recs),
        )
    if not rows:
        print("no run logged a training step")
        return
    base = next(iter(rows.values()))
    print(
        f"| run | steps | train tokens/s (after step {a.after}) | vs first | peak memory GiB | vs first "
        f"| peak memory after step {a.after} GiB | vs first | train loss, last step | validation loss | steps redone |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['last']} | {r['tps']:.0f} | {r['tps'] / base['tps']:.2f}x | {r['mem']:.2f} | "
            f"{r['mem'] / base['mem']:.2f}x | {r['mem_late']:.2f} | {r['mem_late'] / base['mem_late']:.2f}x | "
            f"{r['loss']:.3f} | {r['val']:.3f} | {r['redone'] or 'none'} |"
        )
    print()
    for name, r in rows.items():
        print(f"loss curve {name}: {r['curve']}")


if __name__ == "__main__":
    main()
