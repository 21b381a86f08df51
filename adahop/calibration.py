"""AdaHOP calibration inside training, and the per-layer plan it produces.

For the first ``calibration_steps`` training steps every converted layer runs in the uniform mode
(``use_hadamard`` -> hadamard, else none) while its observer labels x, W and g
(``adahop.patterns.classify``). Each step gives one vote per (layer, tensor) and rank: the majority
label of that step's observations (several with gradient accumulation or activation recomputation).
The votes are summed over the ranks every step (one small all-reduce), so every rank holds the same
counts -- and a checkpoint taken mid-calibration holds them too. After the last calibration step:
label = majority of the summed votes (ties: row, col, none in that order), pair keys per GEMM
(``adahop.patterns.slot_pair_keys``), mode per slot from the table, ``set_modes``, observers removed.

The plan -- per layer fqn: the labels of x, W, g with their mean scores and votes, the pair keys and the
mode of each slot -- is written to ``<dump_folder>/adahop_plan.json`` (rank 0, atomically) and is part
of every full checkpoint (``PlanState``, a Stateful registered under the key "adahop" by adahop.train).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from adahop.modes import LABELS, MODES, SLOTS

PLAN_FILE_NAME = "adahop_plan.json"
PLAN_VERSION = 1
TENSORS = ("x", "w", "g")
_LABEL_INDEX = {lab: i for i, lab in enumerate(LABELS)}


def _log():
    from torchtitan.tools.logging import logger

    return logger


def _subsample_rows(t: torch.Tensor, max_rows: int) -> torch.Tensor:
    if max_rows and t.shape[0] > max_rows:
        stride = t.shape[0] // max_rows
        return t[: stride * max_rows : stride]
    return t


def full_operand(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The full logical operand of a tensor-parallel layer's DTensor (all-gathered, partial sums reduced) as a
    plain tensor, so that its pattern scores are those of the unsharded layer; and whether this rank is not the
    first of its TP group (every rank of the group then holds the same operand: one of them votes). A plain
    tensor comes back as it is."""
    from adahop.linear import _is_dtensor

    if not _is_dtensor(t):
        return t, False
    full = t.full_tensor()
    full = full.wait() if hasattr(full, "wait") else full  # a functional collective's wrapper
    return full, any(c != 0 for c in t.device_mesh.get_coordinate())


def magnitude_map(t: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """|t| max-pooled to at most max_pixels per side, float32 on CPU."""
    a = t.detach().reshape(-1, t.shape[-1]).abs().float()
    r, c = a.shape
    out = (min(r, max_pixels), min(c, max_pixels))
    if out != (r, c):
        a = F.adaptive_max_pool2d(a[None, None], out)[0, 0]
    return a.cpu()


def summarize_modes(layers: dict[str, dict]) -> dict[str, int]:
    """How many slots got each mode (every mode listed, zeros included)."""
    counts = Counter(m for entry in layers.values() for m in entry["modes"].values())
    return {m: counts.get(m, 0) for m in MODES}


def summary_line(plan: dict) -> str:
    counts = summarize_modes(plan["layers"])
    total = sum(counts.values())
    parts = ", ".join(f"{m}={n}" for m, n in counts.items() if n) or "no slots"
    return f"[adahop] plan ({plan['source']}): {len(plan['layers'])} layers, {total} slots: {parts}"


def write_json_atomic(path: str, obj: Any) -> None:
    """`path` holds `obj` as JSON, or is left as it was (adahop.files.write_text_atomic); its folder is made."""
    from .files import write_text_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def load_plan_file(path: str) -> dict:
    from adahop.config import ConfigError

    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSON syntax and text that is not UTF-8
        raise ConfigError(
            "quantize.linear.mx.calibration.plan_file", path, "a readable adahop_plan.json", str(e)
        ) from None
    if not isinstance(plan, dict) or not isinstance(plan.get("layers"), dict):
        raise ConfigError("quantize.linear.mx.calibration.plan_file", path, "a JSON object with a 'layers' table")
    for fqn, entry in plan["layers"].items():
        modes = entry.get("modes", {}) if isinstance(entry, dict) else {}
        for slot in SLOTS:
            if modes.get(slot) not in MODES:
                raise ConfigError(f"plan_file layers.{fqn}.modes.{slot}", modes.get(slot), "modes " + ", ".join(MODES))
    return plan


#: plan_settings' keys as config keys
SETTING_KEYS = {
    "plan_file": "quantize.linear.mx.calibration.plan_file",
    "use_HT_calibration": "quantize.linear.mx.calibration.use_HT_calibration",
    "calibration_steps": "quantize.linear.mx.calibration.calibration_steps",
    "pattern_threshold": "quantize.linear.mx.calibration.pattern_threshold",
    "layer_transform_config": "quantize.linear.mx.calibration.layer_transform_config",
    "use_hadamard": "quantize.linear.mx.use_hadamard",
    "outlier_k": "quantize.linear.mx.outlier_k",
}
# the settings that shaped a checkpointed plan state, by its kind (see plan_kind)
_SHAPED_BY = {
    "calibrating": ("plan_file", "use_HT_calibration", "calibration_steps", "pattern_threshold", "use_hadamard"),
    "calibration": (
        "plan_file",
        "use_HT_calibration",
        "calibration_steps",
        "pattern_threshold",
        "layer_transform_config",
        "outlier_k",
    ),
    "uniform": ("plan_file", "use_HT_calibration", "use_hadamard"),
    "plan_file": ("plan_file",),
}


def plan_settings(mx) -> dict[str, Any]:
    """The [quantize.linear.mx] values that decide a run's plan (and the outlier_k its outlier-extraction
    modes run with), saved with the plan in every checkpoint so that a resumed run is checked against them."""
    from adahop.config import resolved_table
    from adahop.patterns import DEFAULT_THRESHOLD

    cal = mx.calibration
    threshold = cal.pattern_threshold if cal.pattern_threshold is not None else DEFAULT_THRESHOLD
    return {
        "plan_file": str(cal.plan_file or ""),
        "use_HT_calibration": bool(cal.use_HT_calibration),
        "calibration_steps": int(cal.calibration_steps),
        "pattern_threshold": float(threshold),
        "layer_transform_config": resolved_table(mx),
        "use_hadamard": bool(mx.use_hadamard),
        "outlier_k": int(mx.outlier_k),
    }


def plan_kind(state: dict) -> str:
    """What a checkpointed Calibrator state holds: "calibrating" (votes so far), or a plan from
    "calibration", "uniform" or "plan_file"."""
    if state["calibrating"]:
        return "calibrating"
    source = state["plan"]["source"]
    return "plan_file" if source.startswith("plan_file:") else source


def _saved_settings(state: dict) -> dict[str, Any]:
    """The settings a checkpointed state was made with; for a checkpoint that does not hold them, those its
    plan records."""
    if "settings" in state:
        return state["settings"]
    plan = state.get("plan")
    if not plan:
        return {}
    source = plan["source"]
    settings = {
        "plan_file": source.partition(":")[2] if source.startswith("plan_file:") else "",
        "use_HT_calibration": source == "calibration",
        "use_hadamard": plan["uniform_mode"] == "hadamard",
    }
    if source == "calibration":
        settings.update(
            calibration_steps=plan["calibration_steps"],
            pattern_threshold=plan["threshold"],
            layer_transform_config=plan["table"],
        )
    return settings


def settings_differences(state: dict, settings: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(config key, checkpoint's value, this run's value) for each setting that shaped the checkpointed
    `state` and differs in `settings` (plan_settings of this run); a table differs key by key."""
    saved = _saved_settings(state)
    out = []
    for name in _SHAPED_BY[plan_kind(state)]:
        if name not in saved or saved[name] == settings[name]:
            continue
        if name == "layer_transform_config":
            for pair in sorted(set(saved[name]) | set(settings[name])):
                if saved[name].get(pair) != settings[name].get(pair):
                    out.append((f'{SETTING_KEYS[name]}."{pair}"', saved[name].get(pair), settings[name].get(pair)))
        else:
            out.append((SETTING_KEYS[name], saved[name], settings[name]))
    return out


def check_plan_settings(state: dict, settings: dict[str, Any], where: str, rest_steps: str) -> None:
    """Raise ConfigError if this run's `settings` differ from those that shaped the checkpointed `state`
    (read from `where`): the resumed run would keep the checkpoint's plan (or votes) while its config, and
    the adahop_job.json written from it, say otherwise. `rest_steps`: the steps a new calibration would take."""
    from adahop.config import ConfigError

    diffs = settings_differences(state, settings)
    if not diffs:
        return
    key, saved, current = diffs[0]
    listed = "; ".join(f"{k} = {c!r} (checkpoint: {s!r})" for k, s, c in diffs)
    held = "calibration votes" if state["calibrating"] else "plan"
    raise ConfigError(
        key,
        current,
        f"{saved!r}, the value the {held} of the resumed checkpoint {where} was made with",
        f"This run differs in: {listed}. A resumed run keeps the checkpoint's {held}, so these values would not "
        "be used. Keep the checkpoint's values to resume its plan, or change the plan: "
        "--quantize.linear.mx.calibration.plan_file <an adahop_plan.json> uses that plan from the resumed step "
        f"on, --checkpoint.exclude_from_loading adahop calibrates again with this run's values ({rest_steps})",
    )


class Calibrator:
    """Votes, plan and their application for a fixed, ordered set of converted layers."""

    def __init__(
        self,
        layers: dict[str, torch.nn.Module],
        *,
        table: dict[str, str],
        uniform_mode: str,
        calibrate: bool,
        steps: int,
        threshold: Optional[float] = None,
        max_rows: int = 4096,
        visualize: bool = False,
        visualization_folder: str = "./outlier_patterns",
        visualization_max_pixels: int = 256,
        plan_file: str = "",
        settings: Optional[dict[str, Any]] = None,
    ):
        from adahop.patterns import DEFAULT_THRESHOLD

        self.layers = dict(layers)
        self.fqns = list(self.layers)
        self.table = dict(table)
        self.uniform_mode = uniform_mode
        self.steps = int(steps)
        self.threshold = float(threshold) if threshold is not None else float(DEFAULT_THRESHOLD)
        self.max_rows = int(max_rows)
        self.visualize = visualize
        self.visualization_folder = visualization_folder
        self.visualization_max_pixels = int(visualization_max_pixels)
        self.plan_file = plan_file
        self.settings = settings  # plan_settings of the run, saved in checkpoints (adahop.resume checks them)
        self.dump_folder: Optional[str] = None  # where publish() writes adahop_plan.json (None: nowhere)
        self.process_group = None  # None: default group when distributed; "local": no reduction
        self.reduce_device = torch.device("cpu")
        self.rank = 0
        self.plan: Optional[dict] = None
        self.step = 0  # calibration steps done
        n = len(self.fqns)
        self.votes = torch.zeros(n, 3, 3, dtype=torch.float64)  # [layer, tensor x/w/g, label]
        self.score_sums = torch.zeros(n, 3, 2, dtype=torch.float64)  # [layer, tensor, row/col]
        self._pending: list[dict[str, list]] = [{t: [] for t in TENSORS} for _ in self.fqns]
        self._maps: list[dict[str, torch.Tensor]] = [{} for _ in self.fqns]
        self._followers: set[int] = set()  # layers whose operands this rank saw as a TP group's non-first rank
        self.calibrating = False
        if plan_file:
            self.apply_plan(load_plan_file(plan_file), source=f"plan_file:{plan_file}")
        elif calibrate:
            self.calibrating = True
            self._set_uniform()
        else:
            self._set_uniform()
            self.plan = self._make_plan("uniform", labels=None)

    # ------------------------------------------------------------------ layer handling
    def restrict_to(self, modules: list[torch.nn.Module]) -> None:
        """Keep only the layers present in `modules` (pipeline stages); call before any step."""
        present = {id(m) for part in modules for m in part.modules()}
        keep = [f for f in self.fqns if id(self.layers[f]) in present]
        if len(keep) == len(self.fqns):
            return
        idx = [self.fqns.index(f) for f in keep]
        self.fqns = keep
        self.layers = {f: self.layers[f] for f in keep}
        self.votes = self.votes[idx].clone()
        self.score_sums = self.score_sums[idx].clone()
        self._pending = [self._pending[i] for i in idx]
        self._maps = [self._maps[i] for i in idx]
        if self.plan is not None:
            self.plan["layers"] = {f: self.plan["layers"][f] for f in keep if f in self.plan["layers"]}

    def _set_uniform(self) -> None:
        m = self.uniform_mode
        for layer in self.layers.values():
            layer.set_modes(forward_y=m, backward_gx=m, backward_gw=m)

    # ------------------------------------------------------------------ observation
    def observe(self, i: int, name: str, t: torch.Tensor) -> None:
        """Observer body for layer index i (called with x, w in forward and g in backward)."""
        from adahop.patterns import classify

        t, follower = full_operand(t)
        if follower:
            self._followers.add(i)
        sample = t if name == "w" else _subsample_rows(t, self.max_rows)
        r = classify(sample, self.threshold)
        self._pending[i][name].append((r.label, r.row_score, r.col_score))
        if self.visualize and self.step == self.steps - 1 and name not in self._maps[i]:
            self._maps[i][name] = magnitude_map(t, self.visualization_max_pixels)

    def end_step(self) -> bool:
        """Close one training step of calibration; returns True when the plan was fixed now."""
        if not self.calibrating:
            return False
        n = len(self.fqns)
        votes = torch.zeros(n, 3, 3, dtype=torch.float64)
        scores = torch.zeros(n, 3, 2, dtype=torch.float64)
        for i, pending in enumerate(self._pending):
            for j, tname in enumerate(TENSORS):
                obs = pending[tname]
                if not obs:
                    continue
                counts = Counter(lab for lab, _, _ in obs)
                best = max(LABELS, key=lambda lab: (counts.get(lab, 0), -_LABEL_INDEX[lab]))
                votes[i, j, _LABEL_INDEX[best]] = 1.0
                rows = [s for _, s, _ in obs if math.isfinite(s)]
                cols = [s for _, _, s in obs if math.isfinite(s)]
                scores[i, j, 0] = sum(rows) / len(rows) if rows else 0.0
                scores[i, j, 1] = sum(cols) / len(cols) if cols else 0.0
                pending[tname] = []
        for i in self._followers:  # its tensor-parallel group's first rank votes for the group (full_operand)
            votes[i] = 0.0
            scores[i] = 0.0
        self._followers = set()
        both = torch.cat([votes.flatten(), scores.flatten()])
        both = self._all_reduce(both)
        self.votes += both[: votes.numel()].view_as(votes)
        self.score_sums += both[votes.numel() :].view_as(scores)
        self.step += 1
        if self.step >= self.steps:
            self.finalize()
            return True
        return False

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        if self.process_group == "local" or not (dist.is_available() and dist.is_initialized()):
            return t
        if dist.get_world_size(self.process_group) == 1:
            return t
        buf = t.to(self.reduce_device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.process_group)
        return buf.to("cpu", torch.float64)

    # ------------------------------------------------------------------ decision
    def labels(self) -> dict[str, dict[str, dict]]:
        out = {}
        for i, fqn in enumerate(self.fqns):
            entry = {}
            for j, tname in enumerate(TENSORS):
                v = self.votes[i, j]
                total = float(v.sum())
                best = max(range(3), key=lambda k: (float(v[k]), -k))
                entry[tname] = {
                    "label": LABELS[best] if total > 0 else "none",
                    "row_score": float(self.score_sums[i, j, 0]) / total if total else None,
                    "col_score": float(self.score_sums[i, j, 1]) / total if total else None,
                    "votes": {lab: int(v[k]) for k, lab in enumerate(LABELS)},
                }
            out[fqn] = entry
        return out

    def finalize(self) -> None:
        labels = self.labels()
        plan = self._make_plan("calibration", labels=labels)
        self.calibrating = False
        self.apply_plan(plan, source="calibration")
        if self.visualize and self.rank == 0:
            try:
                from adahop.visualize import render_patterns

                folder = self._vis_folder()
                files = render_patterns({f: self._maps[i] for i, f in enumerate(self.fqns)}, labels, folder)
                _log().info(f"[adahop] outlier-pattern maps: {len(files)} PNGs in {folder}")
            except Exception as e:  # visualization must never kill a training run
                _log().warning(f"[adahop] visualization failed: {e!r}")
        self._maps = [{} for _ in self.fqns]

    def _vis_folder(self) -> str:
        f = self.visualization_folder
        return f if os.path.isabs(f) else os.path.join(self.dump_folder or ".", f)

    def _make_plan(self, source: str, labels: Optional[dict]) -> dict:
        from adahop.patterns import slot_pair_keys

        layers = {}
        for fqn in self.fqns:
            if labels is None:
                modes = {s: self.uniform_mode for s in SLOTS}
                layers[fqn] = {"labels": None, "pair_keys": None, "modes": modes}
                continue
            lab = labels[fqn]
            keys = slot_pair_keys(lab["x"]["label"], lab["w"]["label"], lab["g"]["label"])
            layers[fqn] = {
                "labels": lab,
                "pair_keys": keys,
                "modes": {s: self.table[keys[s]] for s in SLOTS},
            }
        return {
            "version": PLAN_VERSION,
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "calibration_steps": self.steps if labels is not None else 0,
            "threshold": self.threshold,
            "table": dict(self.table),
            "uniform_mode": self.uniform_mode,
            "layers": layers,
        }

    def apply_plan(self, plan: dict, source: Optional[str] = None) -> None:
        """Set every layer's modes from `plan` and stop calibrating."""
        from adahop.config import ConfigError

        missing = [f for f in self.fqns if f not in plan["layers"]]
        if missing:
            raise ConfigError(
                "adahop plan",
                f"{len(missing)} converted layers missing, e.g. {missing[0]!r}",
                "a plan made for the same model and filter_fqns",
            )
        plan = dict(plan)
        plan["layers"] = {f: plan["layers"][f] for f in self.fqns}
        if source is not None:
            plan["source"] = source
        plan["summary"] = summarize_modes(plan["layers"])
        for fqn, layer in self.layers.items():
            layer.set_modes(**plan["layers"][fqn]["modes"])
        self.plan = plan
        self.calibrating = False
        self._pending = [{t: [] for t in TENSORS} for _ in self.fqns]

    def publish(self) -> None:
        """Write <dump_folder>/adahop_plan.json (rank 0) and log the summary (every rank)."""
        if self.plan is None:
            return
        if self.rank == 0 and self.dump_folder is not None:
            write_json_atomic(os.path.join(self.dump_folder, PLAN_FILE_NAME), self.plan)
        _log().info(summary_line(self.plan))
        _log().info(f"[adahop] plan digest {plan_digest(self.plan)}")

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        state = {
            "version": PLAN_VERSION,
            "fqns": self.fqns,
            "calibrating": self.calibrating,
            "step": self.step,
            "votes": self.votes.flatten().tolist(),
            "score_sums": self.score_sums.flatten().tolist(),
            "plan": self.plan,
        }
        if self.settings is not None:
            state["settings"] = self.settings
        return {"adahop_state_json": json.dumps(state)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        state = json.loads(sd["adahop_state_json"])
        if state["fqns"] != self.fqns:
            _log().warning("[adahop] checkpointed plan is for other layers; matching by fqn")
        if state["calibrating"]:
            if state["fqns"] != self.fqns:
                raise RuntimeError("cannot resume calibration: converted layers differ from the checkpoint")
            self.votes = torch.tensor(state["votes"], dtype=torch.float64).view_as(self.votes)
            self.score_sums = torch.tensor(state["score_sums"], dtype=torch.float64).view_as(self.score_sums)
            self.step = int(state["step"])
            self.calibrating = True
            self.plan = None
            self._set_uniform()
            _log().info(f"[adahop] resumed calibration at step {self.step}/{self.steps}")
        else:
            self.step = int(state["step"])
            self.apply_plan(state["plan"])
            _log().info("[adahop] plan restored from checkpoint")
            self.publish()


def plan_digest(plan: dict) -> str:
    """A short hash of the decisions (labels and modes) of a plan, to compare ranks and runs."""
    import hashlib

    core = {
        f: {
            "modes": e["modes"],
            "labels": {t: (e["labels"] or {}).get(t, {}).get("label") for t in TENSORS} if e.get("labels") else None,
        }
        for f, e in sorted(plan["layers"].items())
    }
    return hashlib.sha1(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


class PlanState:
    """torch.distributed.checkpoint Stateful wrapper around a Calibrator (checkpoint key "adahop")."""

    def __init__(self, calibrator: Calibrator, on_load: Optional[Callable[[], None]] = None):
        self.calibrator = calibrator
        self.on_load = on_load

    def state_dict(self) -> dict[str, Any]:
        return self.calibrator.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.calibrator.load_state_dict(sd)
        if self.on_load is not None:
            self.on_load()
