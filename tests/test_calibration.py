"""Calibration votes, majority, plan, checkpoint state and plan files (in-process, CPU, fast)."""

from __future__ import annotations

import json

import pytest
import torch

import adahop.titan  # noqa: F401
from adahop.calibration import (
    PLAN_FILE_NAME,
    Calibrator,
    load_plan_file,
    plan_digest,
    summarize_modes,
    summary_line,
    write_json_atomic,
)
from adahop.config import ConfigError
from adahop.linear import AdaHOPLinear
from adahop.modes import MODES, SEED_TABLE, SLOTS
from adahop.patterns import slot_pair_keys


def _layers(n=2, d=64):
    torch.manual_seed(0)
    return {f"layers.{i}.w": AdaHOPLinear(d, d, bias=False) for i in range(n)}


def _col_outliers(tokens=256, d=64):
    x = torch.randn(tokens, d)
    x[:, 3] *= 60.0
    return x


def _row_outliers(tokens=256, d=64):
    g = torch.randn(tokens, d)
    g[7] *= 60.0
    g[100] *= 40.0
    return g


def _feed(cal: Calibrator, i: int, x, w, g, times=1):
    for _ in range(times):
        cal.observe(i, "x", x)
        cal.observe(i, "w", w)
        cal.observe(i, "g", g)


def test_votes_majority_plan_and_modes(tmp_path):
    layers = _layers()
    cal = Calibrator(layers, table=dict(SEED_TABLE), uniform_mode="hadamard", calibrate=True, steps=3)
    cal.dump_folder = str(tmp_path)
    assert all(layer.modes == {s: "hadamard" for s in SLOTS} for layer in layers.values())
    w = torch.randn(64, 64)
    for step in range(3):
        # layer 0: x col-outliers, g row-outliers; layer 1: plain gaussian (one odd step)
        _feed(cal, 0, _col_outliers(), w, _row_outliers())
        x1 = _col_outliers() if step == 0 else torch.randn(256, 64)
        _feed(cal, 1, x1, w, torch.randn(256, 64))
        fixed = cal.end_step()
        assert fixed == (step == 2)
    assert not cal.calibrating
    plan = cal.plan
    l0, l1 = plan["layers"]["layers.0.w"], plan["layers"]["layers.1.w"]
    assert (l0["labels"]["x"]["label"], l0["labels"]["w"]["label"], l0["labels"]["g"]["label"]) == (
        "col",
        "none",
        "row",
    )
    assert l0["labels"]["x"]["votes"] == {"row": 0, "col": 3, "none": 0}
    assert l1["labels"]["x"]["label"] == "none" and l1["labels"]["x"]["votes"]["col"] == 1  # 2 of 3 say none
    keys = slot_pair_keys("col", "none", "row")
    assert l0["pair_keys"] == keys
    assert l0["modes"] == {s: SEED_TABLE[keys[s]] for s in SLOTS}
    assert layers["layers.0.w"].modes == l0["modes"]
    assert l1["modes"] == {s: "hadamard" for s in SLOTS}  # none-none everywhere -> hadamard
    assert sum(plan["summary"].values()) == 6 and set(plan["summary"]) == set(MODES)
    cal.publish()
    on_disk = json.loads((tmp_path / PLAN_FILE_NAME).read_text())
    assert on_disk["layers"] == json.loads(json.dumps(plan["layers"]))
    assert "6 slots" in summary_line(plan)


def test_one_vote_per_step_even_with_recomputation():
    layers = _layers(1)
    cal = Calibrator(layers, table=dict(SEED_TABLE), uniform_mode="none", calibrate=True, steps=2)
    w = torch.randn(64, 64)
    _feed(cal, 0, _col_outliers(), w, _row_outliers(), times=3)  # e.g. activation recomputation
    cal.end_step()
    assert cal.votes[0].sum().item() == 3  # x, w, g: one vote each


def test_state_dict_round_trip_mid_calibration_and_fixed():
    layers = _layers()
    cal = Calibrator(layers, table=dict(SEED_TABLE), uniform_mode="hadamard", calibrate=True, steps=2)
    w = torch.randn(64, 64)
    _feed(cal, 0, _col_outliers(), w, _row_outliers())
    _feed(cal, 1, _col_outliers(), w, _row_outliers())
    cal.end_step()
    mid = cal.state_dict()
    assert isinstance(mid["adahop_state_json"], str)

    layers2 = _layers()
    cal2 = Calibrator(layers2, table=dict(SEED_TABLE), uniform_mode="hadamard", calibrate=True, steps=2)
    cal2.load_state_dict(mid)
    assert cal2.calibrating and cal2.step == 1 and torch.equal(cal2.votes, cal.votes)
    for c in (cal, cal2):
        _feed(c, 0, _col_outliers(), w, _row_outliers())
        _feed(c, 1, _col_outliers(), w, _row_outliers())
        c.end_step()
    assert plan_digest(cal.plan) == plan_digest(cal2.plan)

    layers3 = _layers()
    cal3 = Calibrator(layers3, table=dict(SEED_TABLE), uniform_mode="hadamard", calibrate=True, steps=2)
    cal3.load_state_dict(cal.state_dict())
    assert not cal3.calibrating
    assert {f: layer.modes for f, layer in layers3.items()} == {f: layer.modes for f, layer in layers.items()}


def test_plan_file_skips_calibration(tmp_path):
    layers = _layers()
    plan = {
        "layers": {
            f: {
                "modes": {
                    "forward_y": "full_precision",
                    "backward_gx": "none",
                    "backward_gw": "inner_outlier_extract_right",
                }
            }
            for f in layers
        }
    }
    p = tmp_path / "plan.json"
    write_json_atomic(str(p), plan)
    cal = Calibrator(layers, table=dict(SEED_TABLE), uniform_mode="hadamard", calibrate=True, steps=5, plan_file=str(p))
    assert not cal.calibrating
    assert layers["layers.1.w"].modes["forward_y"] == "full_precision"
    assert cal.plan["source"].startswith("plan_file:")


def test_bad_plan_file_refused(tmp_path):
    p = tmp_path / "plan.json"
    write_json_atomic(str(p), {"layers": {"a": {"modes": {"forward_y": "rotate"}}}})
    with pytest.raises(ConfigError) as e:
        load_plan_file(str(p))
    assert "rotate" in str(e.value)
    layers = _layers()
    write_json_atomic(str(p), {"layers": {"other": {"modes": {s: "none" for s in SLOTS}}}})
    with pytest.raises(ConfigError):
        Calibrator(layers, table=dict(SEED_TABLE), uniform_mode="none", calibrate=False, steps=1, plan_file=str(p))


def test_uniform_plan_without_calibration():
    layers = _layers()
    cal = Calibrator(layers, table=dict(SEED_TABLE), uniform_mode="none", calibrate=False, steps=30)
    assert not cal.calibrating
    assert summarize_modes(cal.plan["layers"])["none"] == 6
    assert all(layer.modes == {s: "none" for s in SLOTS} for layer in layers.values())


def test_visualization_pngs(tmp_path):
    from adahop.visualize import render_patterns

    layers = _layers()
    cal = Calibrator(
        layers,
        table=dict(SEED_TABLE),
        uniform_mode="hadamard",
        calibrate=True,
        steps=1,
        visualize=True,
        visualization_folder="pat",
        visualization_max_pixels=32,
    )
    cal.dump_folder = str(tmp_path)
    w = torch.randn(64, 64)
    for i in range(2):
        _feed(cal, i, _col_outliers(), w, _row_outliers())
    cal.end_step()
    files = sorted(p.name for p in (tmp_path / "pat").glob("*.png"))
    assert files == ["layer_layers.0.w.png", "layer_layers.1.w.png", "summary.png"]
    assert render_patterns({}, {}, str(tmp_path / "empty")) == []
