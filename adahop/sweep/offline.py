"""Offline table sweep: score pattern-pair -> mode tables by GEMM quantization error, no training.

1. capture x, W and g of every AdaHOP layer from a few forward/backward steps (`capture_operands`);
2. label each captured operand (adahop.patterns) and measure, per layer, the relative error of each
   slot's GEMM under every mode (`measure_layers`) -- five runs of the layer per layer;
3. a table sends each (layer, slot) to one mode through the slot's pair key, so its score is a sum
   of measured errors (`score_table`); and since every (layer, slot) has exactly one key, the best
   table is found key by key (`best_table`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..cli import UsageError
from ..linear import AdaHOPLinear, AdaHOPModes, LinearRecipe, mxfp4_linear
from ..modes import MODES, PAIR_KEYS, SLOTS, check_mode
from ..patterns import DEFAULT_THRESHOLD, classify, slot_pair_keys


@dataclass
class CapturedLayer:
    x: list[torch.Tensor] = field(default_factory=list)
    w: torch.Tensor | None = None
    g: list[torch.Tensor] = field(default_factory=list)


def capture_operands(
    model: nn.Module, run_step: Callable[[], None], steps: int = 1, max_tokens: int = 4096
) -> dict[str, CapturedLayer]:
    """x, W, g of every AdaHOP layer of `model` over `steps` calls of `run_step` (forward + backward).

    Token rows are kept in step order up to `max_tokens` per layer (x and g keep the same rows).
    """
    layers = {fqn: m for fqn, m in model.named_modules() if isinstance(m, AdaHOPLinear)}
    grouped = [fqn for fqn, m in model.named_modules() if isinstance(m, AdaHOPModes) and fqn not in layers]
    if grouped:
        # an expert stack's W is [experts * out, in] while its g has one expert's width: its GEMMs need
        # the group sizes, which the observer does not see; say so rather than score them wrongly
        print(
            f"[adahop] offline sweep scores linears only; {len(grouped)} MoE expert stacks left out "
            f"(e.g. {grouped[0]})",
            file=sys.stderr,
        )
    if not layers:
        raise UsageError(
            "the model has no AdaHOP linear layers to capture: the config must list "
            '"quantize.linear.mx" in model.converters, and quantize.linear.mx.filter_fqns must leave '
            "some Linear layers to convert"
        )
    captured = {fqn: CapturedLayer() for fqn in layers}
    saved = {fqn: m.observer for fqn, m in layers.items()}

    def observer_for(fqn):
        cap = captured[fqn]

        def observe(kind: str, t: torch.Tensor) -> None:
            if kind == "w":
                cap.w = t.detach().float().cpu().clone()
                return
            rows = cap.x if kind == "x" else cap.g
            have = sum(r.shape[0] for r in rows)
            if have < max_tokens:
                rows.append(t.detach().float().cpu()[: max_tokens - have].clone())

        return observe

    try:
        for fqn, m in layers.items():
            m.observer = observer_for(fqn)
        for _ in range(steps):
            run_step()
    finally:
        for fqn, m in layers.items():
            m.observer = saved[fqn]
    return captured


@dataclass
class LayerMeasurement:
    labels: dict[str, str]  # x, w, g -> row/col/none
    keys: dict[str, str]  # slot -> pair key
    errors: dict[str, dict[str, float]]  # slot -> mode -> relative error


def _slot_errors(x, w, g, mode: str, recipe_kwargs: dict) -> dict[str, float]:
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = mxfp4_linear(xr, wr, forward_y=mode, backward_gx=mode, backward_gw=mode, **recipe_kwargs)
    y.backward(g)
    xd, wd, gd = x.double(), w.double(), g.double()
    exact = {"forward_y": xd @ wd.t(), "backward_gx": gd @ wd, "backward_gw": gd.t() @ xd}
    got = {"forward_y": y.detach(), "backward_gx": xr.grad, "backward_gw": wr.grad}
    out = {}
    for slot in SLOTS:
        denom = exact[slot].norm().item()
        out[slot] = (got[slot].double() - exact[slot]).norm().item() / denom if denom > 0 else 0.0
    return out


def measure_layers(
    captured: dict[str, CapturedLayer],
    threshold: float = DEFAULT_THRESHOLD,
    recipe_kwargs: dict | None = None,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict[str, LayerMeasurement]:
    """Labels, pair keys and the error of every slot under every mode, per layer."""
    recipe_kwargs = recipe_kwargs or {}
    LinearRecipe(**recipe_kwargs)  # validate early
    out = {}
    for fqn in progress(list(captured)):
        cap = captured[fqn]
        if cap.w is None or not cap.x or not cap.g:
            raise ValueError(f"layer {fqn}: nothing captured for x, W and g (did the step run backward?)")
        x, g = torch.cat(cap.x), torch.cat(cap.g)
        n = min(x.shape[0], g.shape[0])
        x, g = x[:n], g[:n]
        labels = {name: classify(t, threshold).label for name, t in (("x", x), ("w", cap.w), ("g", g))}
        keys = slot_pair_keys(labels["x"], labels["w"], labels["g"])
        per_mode = {mode: _slot_errors(x, cap.w, g, mode, recipe_kwargs) for mode in MODES}
        errors = {slot: {mode: per_mode[mode][slot] for mode in MODES} for slot in SLOTS}
        out[fqn] = LayerMeasurement(labels, keys, errors)
    return out


def check_table(table: dict[str, str], name: str = "table") -> dict[str, str]:
    """A complete pattern-pair -> mode table, or UsageError naming the bad key/value."""
    if not isinstance(table, dict):
        raise UsageError(f"{name}: expected a table of pair key -> mode, got {table!r}")
    unknown = sorted(set(table) - set(PAIR_KEYS))
    if unknown:
        raise UsageError(f"{name}: unknown pair key(s) {unknown}; allowed: {', '.join(PAIR_KEYS)}")
    missing = [k for k in PAIR_KEYS if k not in table]
    if missing:
        raise UsageError(
            f"{name}: missing pair key(s) {missing}; a table gives a mode for all of {', '.join(PAIR_KEYS)}"
        )
    for key, mode in table.items():
        try:
            check_mode(mode, f"{name}[{key!r}]")
        except ValueError as e:  # check_mode's message names the key, the mode and the allowed ones
            raise UsageError(str(e)) from None
    return dict(table)


def score_table(measurements: dict[str, LayerMeasurement], table: dict[str, str]) -> float:
    """Mean relative GEMM error over all (layer, slot) pairs when modes come from `table`."""
    errs = [m.errors[slot][table[m.keys[slot]]] for m in measurements.values() for slot in SLOTS]
    return sum(errs) / len(errs) if errs else math.nan


# Cheapest first: plain MXFP4, + a Hadamard pass, + a BF16 GEMM of k extracted rows, all BF16.
COST_ORDER = ("none", "hadamard", "inner_outlier_extract_left", "inner_outlier_extract_right", "full_precision")
DEFAULT_ALLOWED = COST_ORDER[:4]


def best_table(
    measurements: dict[str, LayerMeasurement],
    fallback: dict[str, str],
    allowed: Iterable[str] = DEFAULT_ALLOWED,
    min_gain: float = 0.10,
) -> tuple[dict[str, str], set[str]]:
    """The best table, chosen key by key (each (layer, slot) has exactly one key).

    Error alone would always pick the costliest mode (an extraction mode is Hadamard plus a BF16 GEMM,
    full_precision is all BF16), so modes are tried cheapest first (COST_ORDER) and a costlier one
    replaces the choice only when it cuts that key's summed error by more than `min_gain` (a fraction).
    full_precision is not allowed unless asked for. Keys no (layer, slot) uses keep `fallback`'s mode;
    they are returned as the second value.
    """
    allowed = sorted({check_mode(m, "allowed mode") for m in allowed}, key=COST_ORDER.index)
    if not 0 <= min_gain < 1:
        raise ValueError(f"min_gain must be in [0, 1), got {min_gain!r}")
    table, unobserved = {}, set()
    for key in PAIR_KEYS:
        cells = [m.errors[slot] for m in measurements.values() for slot in SLOTS if m.keys[slot] == key]
        if not cells:
            table[key] = fallback[key]
            unobserved.add(key)
            continue
        best, best_err = allowed[0], sum(c[allowed[0]] for c in cells)
        for mode in allowed[1:]:
            err = sum(c[mode] for c in cells)
            if err < best_err * (1 - min_gain):
                best, best_err = mode, err
        table[key] = best
    return table, unobserved
