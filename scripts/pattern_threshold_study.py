"""Choose the pattern threshold: scores of structure-free tensors vs tensors with planted outliers.

Prints a markdown report; docs/patterns.md holds its tables, with the reasoning behind the default.

    python scripts/pattern_threshold_study.py [--trials 5]
"""

from __future__ import annotations

import argparse

import torch

from adahop.patterns import pattern_scores

SHAPES = [(4096, 512), (512, 4096), (2048, 2048)]
STRENGTHS = [1.5, 2, 3, 5, 10, 30, 100]
COUNTS = [1, 8, 64]
THRESHOLDS = [2, 3, 4, 6, 8, 12]


def null_tensor(kind: str, shape, gen):
    if kind == "gaussian":
        return torch.randn(shape, generator=gen)
    if kind == "uniform":
        return torch.rand(shape, generator=gen) - 0.5
    dof = {"student_t5": 5.0, "student_t3": 3.0}[kind]
    # Student-t from its definition, drawn with the seeded generator
    z = torch.randn(shape, generator=gen)
    chi2 = torch.randn((int(dof),) + tuple(shape), generator=gen).square().sum(0)
    return z / (chi2 / dof).sqrt()


def planted(shape, direction: str, count: int, strength: float, gen):
    t = torch.randn(shape, generator=gen)
    if direction == "row":
        idx = torch.randperm(shape[0], generator=gen)[:count]
        t[idx] *= strength
    else:
        idx = torch.randperm(shape[1], generator=gen)[:count]
        t[:, idx] *= strength
    return t


def label(scores, threshold):
    row, col = scores
    if max(row, col) <= threshold:
        return "none"
    return "row" if row >= col else "col"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=4)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)

    print("## Structure-free tensors: largest max(row, col) score over shapes and trials\n")
    print("| data | median | max |")
    print("| --- | --- | --- |")
    for kind in ("gaussian", "uniform", "student_t5", "student_t3"):
        scores = [max(pattern_scores(null_tensor(kind, s, gen))) for s in SHAPES for _ in range(args.trials)]
        scores.sort()
        print(f"| {kind} | {scores[len(scores) // 2]:.2f} | {scores[-1]:.2f} |")

    print("\n## Planted outliers: fraction labelled with the right direction, per threshold\n")
    print("| planted | strength | " + " | ".join(f"thr {t}" for t in THRESHOLDS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in THRESHOLDS) + " |")
    for direction in ("row", "col"):
        for count in COUNTS:
            for strength in STRENGTHS:
                results = [
                    pattern_scores(planted(s, direction, count, strength, gen))
                    for s in SHAPES
                    for _ in range(args.trials)
                ]
                hits = [sum(label(r, t) == direction for r in results) / len(results) for t in THRESHOLDS]
                print(f"| {count} {direction}(s) | x{strength} | " + " | ".join(f"{h:.2f}" for h in hits) + " |")


if __name__ == "__main__":
    main()
