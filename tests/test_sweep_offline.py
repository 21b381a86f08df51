"""Offline sweep on a synthetic model whose layers have planted outlier patterns."""

import pytest
import torch
import torch.nn as nn

from adahop.linear import AdaHOPLinear
from adahop.modes import MODES, PAIR_KEYS, SEED_TABLE
from adahop.sweep.offline import best_table, capture_operands, check_table, measure_layers, score_table

T, D = 256, 128


def planted_model():
    g = torch.Generator().manual_seed(0)
    layers = nn.ModuleDict({name: AdaHOPLinear(D, D, bias=False) for name in ("tok_x", "chan_w", "tok_g")})
    with torch.no_grad():
        for lin in layers.values():
            lin.weight.copy_(torch.randn(D, D, generator=g) / D**0.5)
        layers["chan_w"].weight[:, [3, 70]] *= 40  # input channels of W
    inputs = {name: torch.randn(T, D, generator=g) for name in layers}
    inputs["tok_x"][[5, 100, 200]] *= 40  # tokens of x
    grads = {name: torch.randn(T, D, generator=g) for name in layers}
    grads["tok_g"][[7, 150]] *= 40  # tokens of g

    def step():
        for name, lin in layers.items():
            (lin(inputs[name]) * grads[name]).sum().backward()  # dL/dy = the planted gradient

    return layers, step


@pytest.fixture(scope="module")
def measured():
    layers, step = planted_model()
    captured = capture_operands(layers, step, steps=2, max_tokens=T)
    assert captured["tok_x"].x[0].shape == (T, D) and len(captured["tok_x"].x) == 1  # capped at T rows
    assert all(m.observer is None for m in layers.values())  # observers restored
    return measure_layers(captured, recipe_kwargs={"outlier_k": 4})


def test_labels_and_keys(measured):
    assert measured["tok_x"].labels["x"] == "row" and measured["tok_x"].keys["forward_y"] == "row-none"
    assert measured["chan_w"].labels["w"] == "col"
    assert measured["chan_w"].keys == {"forward_y": "none-row", "backward_gx": "none-col", "backward_gw": "none-none"}
    assert measured["tok_g"].keys["backward_gx"] == "row-none" and measured["tok_g"].keys["backward_gw"] == "col-none"


def test_seed_table_beats_plain_mxfp4(measured):
    none_table = {k: "none" for k in PAIR_KEYS}
    assert score_table(measured, SEED_TABLE) < 0.9 * score_table(measured, none_table)


def test_recovers_planted_best_table(measured):
    table, unobserved = best_table(measured, SEED_TABLE)
    assert table["row-none"] == "inner_outlier_extract_left"  # token outliers of the left operand
    assert table["none-col"] == "inner_outlier_extract_right"  # input-channel outliers of W in gx
    assert table["none-row"] == "hadamard"  # W's channel outliers lie along K in the forward GEMM
    assert table["col-none"] == "hadamard"  # g's token outliers lie along K in the weight gradient
    assert unobserved and all(table[k] == SEED_TABLE[k] for k in unobserved)
    assert score_table(measured, table) <= score_table(measured, SEED_TABLE)
    # with full precision allowed and no gain required, error alone picks it everywhere: hence opt-in
    everything = best_table(measured, SEED_TABLE, allowed=MODES, min_gain=0)[0]
    assert {everything[k] for k in PAIR_KEYS if k not in unobserved} == {"full_precision"}


def test_bad_tables_refused():
    with pytest.raises(ValueError, match="unknown pair key"):
        check_table({**SEED_TABLE, "row-rows": "hadamard"})
    with pytest.raises(ValueError, match=r"\['row-row'\]"):
        check_table({k: v for k, v in SEED_TABLE.items() if k != "row-row"})
    with pytest.raises(ValueError, match="unknown mode 'hadamart'"):
        check_table({**SEED_TABLE, "col-col": "hadamart"}, name="t")


def test_capture_needs_adahop_layers():
    with pytest.raises(ValueError, match="no AdaHOP linear layers"):
        capture_operands(nn.Linear(4, 4), lambda: None)


def test_report_files(measured, tmp_path):
    from adahop.sweep.report import write_offline_report

    none_table = {k: "none" for k in PAIR_KEYS}
    best, unobserved = best_table(measured, SEED_TABLE)
    report = write_offline_report(tmp_path, measured, {"seed": SEED_TABLE, "none": none_table}, best, unobserved)
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 3 ")]
    assert "best (found)" in rows[0] and "none" in rows[1]  # best first, plain MXFP4 last
    assert '"row-none" = "inner_outlier_extract_left"' in text
    for name in ("layer_errors.png", "ranking.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_report_marks_tables_outside_the_allowed_modes(measured, tmp_path):
    """A table with full_precision slots can beat the best MXFP4-only table: the report says why."""
    from adahop.sweep.offline import DEFAULT_ALLOWED
    from adahop.sweep.report import write_offline_report

    fp_table = dict(SEED_TABLE, **{k: "full_precision" for k in PAIR_KEYS[:3]})
    best, unobserved = best_table(measured, SEED_TABLE)
    text = write_offline_report(
        tmp_path,
        measured,
        {"none": {k: "none" for k in PAIR_KEYS}, "fp": fp_table},
        best,
        unobserved,
        allowed=tuple(DEFAULT_ALLOWED),
    ).read_text()
    assert "full_precision" not in DEFAULT_ALLOWED
    rows = {
        line.split("|")[2].strip(): line
        for line in text.split("## Best table")[0].splitlines()
        if line[:3] in {f"| {i}" for i in range(1, 10)}
    }
    assert rows["fp"].rstrip(" |").endswith("full_precision")
    assert rows["none"].rstrip().endswith("|  |") and "chosen from the modes" in text
