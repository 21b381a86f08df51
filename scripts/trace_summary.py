"""Where a profiled training step's time went, from a torch.profiler chrome trace (what torchtitan writes with
`--profiling.enable_profiling`: <dump_folder>/<save_traces_folder>/iteration_<N>/rank0_trace.json).

    python scripts/trace_summary.py TRACE.json [--rows 30]

Prints the profiled steps' wall time (the ProfilerStep#N spans), the GPU kernel time by group (the groups of
scripts/profile_step.py), how busy the GPU was (the union of kernel intervals over the steps' span: a GPU
idle between kernels is waiting for the host), the GPU's idle gaps, the kernels by name (`--kernels N`, the N
longest), and the host ops by inclusive time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import group_of  # noqa: E402


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by [start, end) intervals (overlapping kernels of several streams count once)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def idle_gaps(intervals: list[tuple[float, float]]) -> list[float]:
    """Lengths of the gaps between the merged kernel intervals."""
    gaps, end = [], None
    for s, e in sorted(intervals):
        if end is not None and s > end:
            gaps.append(s - end)
        end = e if end is None else max(end, e)
    return gaps


def by_name(events: list[dict], t0: float) -> list[tuple[str, float, int]]:
    """(name, total duration, count) of the events from `t0` on, per name, longest first."""
    totals: dict[str, list[float]] = {}
    for e in events:
        if e["ts"] >= t0:
            rec = totals.setdefault(e["name"], [0.0, 0])
            rec[0] += e["dur"]
            rec[1] += 1
    return sorted(((name, t, c) for name, (t, c) in totals.items()), key=lambda r: -r[1])


def summarize(trace: dict, rows: int = 30, kernel_rows: int = 0) -> str:
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    # a CUDA trace holds each ProfilerStep#N twice: the host span and its copy on the GPU timeline
    # ("gpu_user_annotation"); counting both halves every per-step figure
    steps = sorted(
        (
            e
            for e in events
            if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("cat") != "gpu_user_annotation"
        ),
        key=lambda e: e["ts"],
    )
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    cpu_ops = [e for e in events if e.get("cat") == "cpu_op"]
    if not steps:
        raise ValueError("no ProfilerStep#N spans in the trace (was it written by a scheduled torch.profiler?)")
    t0 = steps[0]["ts"]
    t1 = max(max(e["ts"] + e["dur"] for e in steps), max((e["ts"] + e["dur"] for e in kernels), default=t0))
    n = len(steps)
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if e["ts"] >= t0]
    busy = union_length(spans)
    wall = t1 - t0
    lines = [
        f"{n} profiled steps ({', '.join(e['name'] for e in steps)}): {wall / 1e3 / n:.1f} ms per step "
        f"(first step start to last kernel end), kernel time {sum(b - a for a, b in spans) / 1e3 / n:.1f} ms "
        f"per step, GPU busy {100 * busy / wall:.0f}%"
        if wall > 0
        else f"{n} profiled steps, empty span"
    ]
    groups: dict[str, float] = {}
    for e in kernels:
        if e["ts"] >= t0:
            groups[group_of(e["name"])] = groups.get(group_of(e["name"]), 0.0) + e["dur"]
    if groups:
        total = sum(groups.values())
        lines += ["", "| kernel group | ms / step | share |", "| --- | --- | --- |"]
        lines += [
            f"| {g} | {t / 1e3 / n:.2f} | {100 * t / total:.0f}% |"
            for g, t in sorted(groups.items(), key=lambda kv: -kv[1])
        ]
        gaps = idle_gaps(spans)
        big = [g for g in gaps if g >= 1000]
        lines += [
            "",
            f"GPU idle gaps: {len(gaps) / n:.1f} per step, {sum(gaps) / 1e3 / n:.2f} ms per step; "
            f"{len(big) / n:.1f} per step of 1 ms or more, {sum(big) / 1e3 / n:.2f} ms per step",
        ]
    if kernel_rows:
        lines += ["", "kernels by GPU time (ms / step, launches / step, group):"]
        for name, t, c in by_name(kernels, t0)[:kernel_rows]:
            lines.append(f"  {t / 1e3 / n:9.2f}  x{c / n:<8.1f} {group_of(name):<18} {name[:110]}")
    lines += ["", "host ops by inclusive time (ms / step, calls / step):"]
    for name, t, c in by_name(cpu_ops, t0)[:rows]:
        lines.append(f"  {t / 1e3 / n:9.2f}  x{c / n:<8.0f} {name[:100]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--rows", type=int, default=30, help="host ops listed")
    p.add_argument("--kernels", type=int, default=0, help="GPU kernels listed by name (0: none)")
    args = p.parse_args(argv)
    with open(args.trace) as f:
        print(summarize(json.load(f), args.rows, args.kernels))


if __name__ == "__main__":
    main()
