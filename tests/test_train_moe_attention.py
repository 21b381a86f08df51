"""End to end on CPU: a MoE model with MXFP4 grouped GEMMs (calibrated, planned like linears) and a
dense model with MXFP4 attention."""

import json

import pytest
from train_helpers import base_toml, losses, run_train

MOE_ARGS = [
    "--model.name",
    "adahop_qwen3",
    "--model.flavor",
    "moe_nano",
    "--quantize.linear.mx.filter_fqns",
    "output,router.gate",
    "--quantize.linear.mx.enable_mxfp4_gmm",
]


@pytest.mark.slow
def test_moe_trains_with_calibrated_expert_layers(tmp_path):
    cfg = tmp_path / "moe.toml"
    dump = tmp_path / "out"
    cfg.write_text(base_toml(dump, steps=6, calibration_steps=3))
    r = run_train(cfg, MOE_ARGS)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "[adahop] plan (calibration)" in r.stdout
    plan = json.loads((dump / "adahop_plan.json").read_text())
    experts = [f for f in plan["layers"] if ".moe.experts.mx_" in f]
    assert sorted(experts) == sorted(f"layers.{i}.moe.experts.mx_{w}" for i in range(2) for w in ("w1", "w2", "w3"))
    for f in experts:
        entry = plan["layers"][f]
        assert set(entry["labels"]) == {"x", "w", "g"} and set(entry["modes"]) == {
            "forward_y",
            "backward_gx",
            "backward_gw",
        }
    assert not any("router.gate" in f for f in plan["layers"])
    steps = losses(r.stdout)
    assert 6 in steps and all(v == v for v in steps.values())  # finite losses through the last step


@pytest.mark.slow
def test_mxfp4_attention_trains(tmp_path):
    cfg = tmp_path / "fa.toml"
    cfg.write_text(base_toml(tmp_path / "out", steps=4, calibration_steps=2))
    r = run_train(
        cfg,
        [
            "--quantize.linear.mx.enable_mxfp4_fa",
            "--quantize.linear.mx.attention.no-smooth-keys",
            "--model.print_after_conversion",
        ],
    )
    assert r.returncode == 0, r.stdout[-4000:]
    # the [quantize.linear.mx.attention] settings reach the layers
    assert "MXFP4Attention(hadamard_size=32, use_sr_grad=False, smooth_keys=False, quantize_dp=False)" in r.stdout
    assert 4 in losses(r.stdout)
