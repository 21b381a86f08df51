"""Markdown + PNG reports of table sweeps (offline errors, online loss curves)."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_text_atomic
from ..modes import MODES, PAIR_KEYS, SLOTS
from .offline import LayerMeasurement, score_table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_errors(measurements: dict[str, LayerMeasurement], tables: dict[str, dict[str, str]], path: Path) -> None:
    """One panel per slot: error of each layer under each table."""
    plt = _plt()
    fqns = list(measurements)
    fig, axes = plt.subplots(len(SLOTS), 1, figsize=(max(6, 0.35 * len(fqns) + 3), 3 * len(SLOTS)), sharex=True)
    for ax, slot in zip(axes, SLOTS):
        for name, table in tables.items():
            errs = [measurements[f].errors[slot][table[measurements[f].keys[slot]]] for f in fqns]
            ax.plot(range(len(fqns)), errs, marker="o", ms=3, label=name)
        ax.set_ylabel(f"{slot}\nrel. error")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[-1].set_xticks(range(len(fqns)))
    axes[-1].set_xticklabels(fqns, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ranking(scores: dict[str, float], path: Path, ylabel: str) -> None:
    plt = _plt()
    names = sorted(scores, key=scores.get)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), [scores[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_offline_report(
    out_dir: str | Path,
    measurements: dict[str, LayerMeasurement],
    tables: dict[str, dict[str, str]],
    best: dict[str, str],
    unobserved: set[str],
    context: str = "",
    allowed: tuple[str, ...] | None = None,
) -> Path:
    """report.md, results.json, layer_errors.png and ranking.png in `out_dir`; returns the report path.

    `allowed`: the modes the best table was chosen from; a given table using others is marked, since it
    can score below the best one found (full_precision has the lowest error of all, at BF16 cost)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_tables = {**tables, "best (found)": best}
    scores = {name: score_table(measurements, t) for name, t in all_tables.items()}
    ranked = sorted(scores, key=scores.get)
    best_score = scores["best (found)"]
    plot_layer_errors(measurements, all_tables, out / "layer_errors.png")
    plot_ranking(scores, out / "ranking.png", "mean relative GEMM error")

    lines = ["# Offline table sweep", ""]
    if context:
        lines += [context, ""]
    lines += [
        "Score: mean relative error of the three GEMMs over all converted layers (lower is better).",
        "",
    ]
    if allowed is not None:
        lines += [
            f"The best table is chosen from the modes {', '.join(allowed)}; tables using other modes are "
            "marked in the last column.",
            "",
        ]
    lines += [
        "| rank | table | score | vs best | modes outside the best table's choice |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, name in enumerate(ranked, 1):
        extra = sorted({m for m in all_tables[name].values() if allowed is not None and m not in allowed})
        lines.append(
            f"| {i} | {name} | {scores[name]:.4f} | {100 * (scores[name] / best_score - 1):+.1f}% | "
            f"{', '.join(extra)} |"
        )
    lines += ["", "## Best table found", "", "| key | mode | note |", "| --- | --- | --- |"]
    for key in PAIR_KEYS:
        lines.append(
            f"| {key} | {best[key]} | {'not seen in any layer: kept from the fallback' if key in unobserved else ''} |"
        )
    lines += ["", "```toml", "[quantize.linear.mx.calibration.layer_transform_config]"]
    lines += [f'"{k}" = "{best[k]}"' for k in PAIR_KEYS] + ["```", ""]
    lines += ["## Layers", "", "| layer | x | W | g | " + " | ".join(f"{s} key" for s in SLOTS) + " |"]
    lines.append("| --- " * (4 + len(SLOTS)) + "|")
    for fqn, m in measurements.items():
        lines.append(
            f"| {fqn} | {m.labels['x']} | {m.labels['w']} | {m.labels['g']} | "
            + " | ".join(m.keys[s] for s in SLOTS)
            + " |"
        )
    lines += ["", "![errors per layer](layer_errors.png)", "", "![ranking](ranking.png)", ""]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    results = {
        "scores": scores,
        "best_table": best,
        "unobserved_keys": sorted(unobserved),
        "tables": all_tables,
        "layers": {fqn: {"labels": m.labels, "keys": m.keys, "errors": m.errors} for fqn, m in measurements.items()},
        "modes": list(MODES),
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    return report
