"""Outlier-pattern pictures (``visualize_outlier_patterns = true``), written at the end of calibration.

* ``<folder>/layer_<fqn>.png``: per converted layer, the magnitude maps |x| [tokens, in],
  |W| [out, in] and |g| [tokens, out] of the last calibration step (max-pooled to at most
  ``visualization_max_pixels`` per side, log colour scale), each titled with its label and scores.
* ``<folder>/summary.png``: one grid, layers x (x, W, g), each cell coloured by its label.
"""

from __future__ import annotations

import os
import re

import torch

LABEL_COLORS = {"row": "#d62728", "col": "#1f77b4", "none": "#cccccc"}
TITLE_COLORS = {"row": "#d62728", "col": "#1f77b4", "none": "#555555"}
TENSOR_TITLES = {"x": "x [tokens, in]", "w": "W [out, in]", "g": "g = dL/dy [tokens, out]"}


def _safe(fqn: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", fqn)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def render_patterns(maps: dict[str, dict[str, torch.Tensor]], labels: dict[str, dict], folder: str) -> list[str]:
    """Write the per-layer PNGs and the summary grid; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, LogNorm

    os.makedirs(folder, exist_ok=True)
    written = []
    for fqn, tmaps in maps.items():
        if not tmaps:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, t in zip(axes, ("x", "w", "g")):
            lab = labels.get(fqn, {}).get(t, {})
            if t in tmaps:
                a = tmaps[t].float().numpy()
                pos = a[a > 0]
                vmin = float(pos.min()) if pos.size else 1e-12
                vmax = float(a.max()) if a.size and a.max() > vmin else vmin * 10
                im = ax.imshow(
                    a, aspect="auto", interpolation="nearest", cmap="viridis", norm=LogNorm(vmin=vmin, vmax=vmax)
                )
                fig.colorbar(im, ax=ax, fraction=0.046)
            else:
                ax.text(0.5, 0.5, "not observed", ha="center", va="center")
            ax.set_title(
                f"{TENSOR_TITLES[t]}\nlabel={lab.get('label', '?')} "
                f"row={_fmt(lab.get('row_score'))} col={_fmt(lab.get('col_score'))}",
                fontsize=9,
                color=TITLE_COLORS.get(lab.get("label"), "black"),
            )
            ax.set_xlabel("columns")
            ax.set_ylabel("rows")
        fig.suptitle(f"{fqn}: |x|, |W|, |g| (max-pooled)", fontsize=11)
        fig.tight_layout()
        path = os.path.join(folder, f"layer_{_safe(fqn)}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    fqns = list(labels)
    if fqns:
        order = ("row", "col", "none")
        grid = [[order.index(labels[f][t]["label"]) for t in ("x", "w", "g")] for f in fqns]
        fig, ax = plt.subplots(figsize=(5, max(2.5, 0.22 * len(fqns) + 1.2)))
        cmap = ListedColormap([LABEL_COLORS[k] for k in order])
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, aspect="auto", interpolation="nearest")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, order[v], ha="center", va="center", fontsize=7)
        ax.set_xticks(range(3), ["x", "W", "g"])
        ax.set_yticks(range(len(fqns)), fqns, fontsize=7)
        ax.set_title("outlier-pattern labels (red row, blue col, grey none)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(folder, "summary.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
