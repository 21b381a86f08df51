"""adahop.budget_plan: same-BF16-budget baseline plans (uniform Hadamard with as many full_precision slots as a
calibrated plan, placed by a rule), and their use as a plan_file."""

from __future__ import annotations

import json

import pytest

from adahop.budget_plan import budget_plan, main, ordered_slots
from adahop.modes import FULL_PRECISION, HADAMARD, NONE, SLOTS

FQNS = [f"layers.{b}.{name}" for b in range(4) for name in ("attention.wq", "feed_forward.w2")] + ["output_proj"]


def _full(plan):
    return [(f, s) for f, e in plan["layers"].items() for s, m in e["modes"].items() if m == FULL_PRECISION]


def test_weight_gradients_first_takes_every_weight_gradient_in_layer_order_first():
    plan = budget_plan(FQNS, 11, "weight_gradients_first")
    full = _full(plan)
    assert len(full) == 11 and sorted(f for f, s in full if s == "backward_gw") == sorted(FQNS)
    # the two slots past the nine weight gradients: the input gradients of the first two layers
    assert sorted((f, s) for f, s in full if s != "backward_gw") == [
        ("layers.0.attention.wq", "backward_gx"),
        ("layers.0.feed_forward.w2", "backward_gx"),
    ]
    others = {m for e in plan["layers"].values() for m in e["modes"].values() if m != FULL_PRECISION}
    assert others == {HADAMARD} and plan["summary"][FULL_PRECISION] == 11


def test_edges_inward_fills_the_first_and_last_blocks_then_inward():
    order = [f for f, _ in ordered_slots(FQNS, "edges_inward")]
    blocks = [f.split(".")[1] if f.startswith("layers.") else None for f in order]
    per_block = 2 * len(SLOTS)
    assert blocks[:per_block] == ["0"] * per_block and blocks[per_block : 2 * per_block] == ["3"] * per_block
    assert set(blocks[2 * per_block : 4 * per_block]) == {"1", "2"} and blocks[-len(SLOTS) :] == [None] * 3
    full = _full(budget_plan(FQNS, 2 * per_block, "edges_inward"))
    assert {f.split(".")[1] for f, _ in full} == {"0", "3"}


def test_random_is_reproducible_from_its_seed_and_differs_between_seeds():
    a, b, c = (_full(budget_plan(FQNS, 7, "random", seed=s)) for s in (5, 5, 6))
    assert a == b and len(a) == 7 and set(a) != set(c)


@pytest.mark.parametrize("count", [0, len(FQNS) * 3])
def test_no_slot_and_every_slot(count):
    plan = budget_plan(FQNS, count, "random", mode=NONE)
    assert len(_full(plan)) == count and plan["summary"][NONE] == len(FQNS) * 3 - count


def _like(tmp_path, n_full=4):
    layers = {f: {"modes": dict.fromkeys(SLOTS, HADAMARD)} for f in FQNS}
    for f in FQNS[:n_full]:
        layers[f]["modes"]["backward_gw"] = FULL_PRECISION
    path = tmp_path / "like.json"
    path.write_text(json.dumps({"layers": layers}))
    return path


def test_cli_matches_the_budget_of_the_given_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--like", str(_like(tmp_path)), "--rule", "edges_inward", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["summary"][FULL_PRECISION] == 4 and set(plan["layers"]) == set(FQNS)
    assert plan["source"] == "budget:edges_inward" and "plan_file" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--rule", "edges_inward", "--out", "{exists}"], "exists: give a new file name"),
        (["--rule", "random", "--count", "28", "--out", "{new}"], "--count 28"),
        (["--rule", "random", "--mode", "full_precision", "--out", "{new}"], "--mode 'full_precision'"),
        (["--rule", "random", "--like", "{missing}", "--out", "{new}"], "not a readable adahop_plan.json"),
        (["--rule", "random", "--like", "{empty}", "--out", "{new}"], "'layers' table"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, says):
    (tmp_path / "exists.json").write_text("keep me")
    (tmp_path / "empty.json").write_text("{}")
    names = {
        "exists": tmp_path / "exists.json",
        "new": tmp_path / "new.json",
        "missing": tmp_path / "nope.json",
        "empty": tmp_path / "empty.json",
    }
    argv = [a.format(**names) for a in args]
    if "--like" not in argv:
        argv = ["--like", str(_like(tmp_path)), *argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "new.json").exists() and (tmp_path / "exists.json").read_text() == "keep me"


def test_a_budget_plan_trains_as_a_plan_file(tmp_path):
    """Made from a converted model's own plan, it is accepted by plan_file and sets the layers' modes."""
    from test_converter import _job_config, _nano

    from adahop.budget_plan import _main as budget_main
    from adahop.converter import AdaHOPConverter
    from adahop.plan_wiring import wire

    def converted(**overrides):
        jc = _job_config(**overrides)
        jc.job.dump_folder = str(tmp_path)
        conv = AdaHOPConverter(jc, None)
        model = _nano()
        conv.convert(model)
        wire(conv, [model])
        return conv

    first = converted(**{"calibration.use_HT_calibration": False})
    first.calibrator.publish()
    out = tmp_path / "budget.json"
    budget_main(
        [
            "--like",
            str(tmp_path / "adahop_plan.json"),
            "--rule",
            "weight_gradients_first",
            "--count",
            "5",
            "--out",
            str(out),
        ]
    )
    conv = converted(**{"calibration.use_HT_calibration": False, "calibration.plan_file": str(out)})
    full = [(f, s) for f, layer in conv.layers.items() for s, m in layer.modes.items() if m == FULL_PRECISION]
    assert len(full) == 5 and {s for _, s in full} == {"backward_gw"}
    assert not conv.calibrator.calibrating


def test_cli_unwritable_out_and_undecodable_like_are_one_line(tmp_path, capsys):
    like = _like(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{")
    cases = [
        (["--like", str(like), "--rule", "random", "--out", str(tmp_path / "a_file" / "o.json")], "cannot be written"),
        (["--like", str(like), "--rule", "random", "--out", ""], "a file name is needed"),
        (["--like", str(like), "--rule", "random", "--out", str(tmp_path)], "a file name is needed"),
        (["--like", str(tmp_path / "binary.json"), "--rule", "random", "--out", str(tmp_path / "n.json")], "readable"),
        (["--like", str(like), "--rule", "random", "--count", "1.5", "--out", str(tmp_path / "n.json")], "--count"),
        (["--like", str(like), "--rule", "bogus", "--out", str(tmp_path / "n.json")], "--rule"),
    ]
    for argv, says in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (argv, err)
    assert not (tmp_path / "n.json").exists()
