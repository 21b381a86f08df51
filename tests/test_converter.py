"""The AdaHOP converter (quantize.linear.mx): conversion only; its wiring (adahop.plan_wiring): calibration,
observers, quantization-error metric. Registration: tests/test_registry.py."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch

import adahop.titan  # noqa: F401
from adahop.config import ConfigError
from adahop.converter import AdaHOPConverter, hadamard_seed
from adahop.data import TOKENIZER_DIR
from adahop.linear import AdaHOPLinear
from adahop.plan_wiring import wire


def _job_config(**mx_overrides):
    from torchtitan.config import ConfigManager

    c = ConfigManager().parse_args(
        [
            "--job.custom_config_module",
            "adahop.config",
            "--model.name",
            "adahop_llama3",
            "--model.flavor",
            "nano",
            "--model.converters",
            "quantize.linear.mx",
            "--training.steps",
            "40",
            "--training.seq_len",
            "64",
            "--model.hf_assets_path",
            str(TOKENIZER_DIR),  # the embedded tokenizer (torchtitan's default folder does not exist here)
        ]
    )
    mx = c.quantize.linear.mx
    mx_overrides = {"calibration.use_HT_calibration": True, **mx_overrides}
    for k, v in mx_overrides.items():
        obj, _, name = k.rpartition(".")
        setattr(mx.calibration if obj == "calibration" else mx, name, v)
    return c


def _nano():
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec("adahop_llama3")
    args = dataclasses.replace(spec.model_args["nano"], max_seq_len=64)
    torch.manual_seed(0)
    model = spec.model_cls(args)
    with torch.no_grad():
        model.init_weights()
    return model


def test_train_spec_flavors():
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec("adahop_llama3")
    assert {"nano", "tiny", "125M", "1B", "3B", "1B_v8k", "debugmodel", "8B"} <= set(spec.model_args)
    one_b = spec.model_args["1B"]
    assert (one_b.dim, one_b.n_layers, one_b.n_heads, one_b.n_kv_heads, one_b.vocab_size) == (2048, 16, 32, 8, 128256)
    with torch.device("meta"):
        m = spec.model_cls(dataclasses.replace(one_b, max_seq_len=128))
    assert m.layers["0"].feed_forward.w1.weight.shape == (8192, 2048)
    with torch.device("meta"):
        m3 = spec.model_cls(dataclasses.replace(spec.model_args["3B"], max_seq_len=128))
    assert m3.layers["0"].feed_forward.w1.weight.shape == (8192, 3072) and len(m3.layers) == 28


def test_convert_keeps_parameters_and_filters():
    model = _nano()
    params = {n: p for n, p in model.named_parameters()}
    conv = AdaHOPConverter(_job_config(), None)
    conv.convert(model)
    converted = {n for n, m in model.named_modules() if isinstance(m, AdaHOPLinear)}
    assert "output" not in converted and "layers.0.attention.wq" in converted
    assert len(converted) == 2 * 7
    for n, p in model.named_parameters():
        assert p is params[n]  # same Parameter objects, nothing copied
    assert model.layers["0"].attention.wq.modes == {s: "hadamard" for s in ("forward_y", "backward_gx", "backward_gw")}
    wire(conv, [model])
    assert conv.calibrator.calibrating
    assert hadamard_seed("layers.0.attention.wq") == hadamard_seed("layers.0.attention.wq")
    assert hadamard_seed("layers.0.attention.wq") != hadamard_seed("layers.0.attention.wk")


def test_convert_on_meta_device():
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec("adahop_llama3")
    with torch.device("meta"):
        model = spec.model_cls(dataclasses.replace(spec.model_args["tiny"], max_seq_len=64))
    AdaHOPConverter(_job_config(), None).convert(model)
    assert isinstance(model.layers["3"].feed_forward.w2, AdaHOPLinear)
    assert model.layers["3"].feed_forward.w2.weight.is_meta


def test_uniform_modes_without_calibration():
    model = _nano()
    conv = AdaHOPConverter(_job_config(**{"use_hadamard": False, "calibration.use_HT_calibration": False}), None)
    conv.convert(model)
    wire(conv, [model])
    assert model.layers["1"].feed_forward.w3.modes == {s: "none" for s in ("forward_y", "backward_gx", "backward_gw")}
    assert not conv.calibrator.calibrating and conv.calibrator.plan["source"] == "uniform"
    assert all(layer.observer is None for layer in conv.layers.values())


def test_disabled_linear_converts_nothing():
    model = _nano()
    conv = AdaHOPConverter(_job_config(enable_mxfp4_linear=False), None)
    conv.convert(model)
    assert not any(isinstance(m, AdaHOPLinear) for m in model.modules())


@pytest.mark.parametrize("filters", [["layers", "output"], ["o"]], ids=["every-layer", "one-letter"])
def test_filter_fqns_leaving_no_linear_refused_before_the_model_is_built(filters):
    """A filter_fqns that keeps every Linear in high precision would train the baseline while the config
    says MXFP4 (e.g. filter_fqns = "output" read as letters); enable_mxfp4_linear = false says it on purpose."""
    from adahop.config import validate_job_config

    c = _job_config(filter_fqns=filters)
    with pytest.raises(ConfigError) as e:
        validate_job_config(c, check_model=True)  # on the meta model, before anything is built
    msg = str(e.value)
    assert e.value.key == "quantize.linear.mx.filter_fqns" and repr(filters) in msg, msg
    assert "at least one nn.Linear" in msg and "enable_mxfp4_linear = false" in msg, msg
    with pytest.raises(ConfigError):
        AdaHOPConverter(c, None).convert(_nano())  # also through torchtitan's own entry
    c.quantize.linear.mx.enable_mxfp4_linear = False
    validate_job_config(c, check_model=True)


def test_filter_fqns_entry_matching_no_module_is_warned(caplog):
    model = _nano()
    conv = AdaHOPConverter(_job_config(filter_fqns=["output", "router.gate", "layers.1.attention.wq"]), None)
    with caplog.at_level("WARNING"):
        conv.convert(model)
    warned = [r.getMessage() for r in caplog.records if "filter_fqns entry" in r.getMessage()]
    assert len(warned) == 1 and "'router.gate'" in warned[0] and "keeps nothing" in warned[0], warned
    assert "layers.1.attention.wq" not in conv.layers and "layers.0.attention.wq" in conv.layers


def test_gmm_on_a_model_without_experts_refused():
    conv = AdaHOPConverter(_job_config(enable_mxfp4_gmm=True), None)
    with pytest.raises(ConfigError, match="enable_mxfp4_gmm = True.*without MoE experts"):
        conv.convert(_nano())


def test_calibration_through_training_steps(tmp_path):
    """post_optimizer_hook closes calibration steps; observers are removed afterwards."""
    model = _nano()
    jc = _job_config(**{"calibration.calibration_steps": 2})
    jc.job.dump_folder = str(tmp_path)
    conv = AdaHOPConverter(jc, None)
    conv.convert(model)
    wire(conv, [model])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 8192, (2, 64))
    for step in range(3):
        model(tokens).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
        conv.post_optimizer_hook([model])
        if step == 0:
            assert conv.calibrator.calibrating and conv.calibrator.votes.sum() == 14 * 3
    assert not conv.calibrator.calibrating
    assert all(layer.observer is None for layer in conv.layers.values())
    modes = {f: layer.modes for f, layer in conv.layers.items()}
    assert modes == {f: e["modes"] for f, e in conv.calibrator.plan["layers"].items()}
    assert (tmp_path / "adahop_plan.json").is_file()


def test_eval_forward_casts_no_vote():
    model = _nano()
    conv = AdaHOPConverter(_job_config(), None)
    conv.convert(model)
    wire(conv, [model])
    model.eval()
    with torch.no_grad():
        model(torch.randint(0, 8192, (1, 64)))
    conv.calibrator.end_step()
    assert conv.calibrator.votes.sum() == 0


def test_quant_error_metric():
    model = _nano()
    conv = AdaHOPConverter(_job_config(quant_error_freq=1, quant_error_tokens=64), None)
    conv.convert(model)
    logged = []
    wire(
        conv,
        [model],
        trainer=types.SimpleNamespace(
            step=1,
            metrics_processor=types.SimpleNamespace(
                logger=types.SimpleNamespace(log=lambda m, s: logged.append((m, s)))
            ),
        ),
    )
    model(torch.randint(0, 8192, (2, 64))).float().logsumexp(-1).mean().backward()
    conv.post_optimizer_hook([model])
    ((metrics, step),) = logged
    assert step == 1
    for slot in ("forward_y", "backward_gx", "backward_gw"):
        v = metrics[f"adahop_qerr/{slot}/mean"]
        assert 0.0 < v < 0.5, (slot, v)
        assert f"adahop_qerr/{slot}/layers.0.attention.wq" in metrics


def _no_wiring(conv, model, dump_folder):
    assert conv.wiring is None and conv.calibrator is None and conv.qerr is None
    assert all(getattr(m, "observer", None) is None for m in model.modules())
    assert not any(dump_folder.iterdir())


def test_convert_swaps_modules_and_does_nothing_else(tmp_path):
    """As torchtitan's converters: no calibrator, probe, observer, plan file or plan modes after convert; the
    wiring brings them (here a plan_file's modes and the quant-error probe's observers)."""
    model = _nano()
    plan_src = AdaHOPConverter(_job_config(**{"calibration.use_HT_calibration": False}), None)
    src_model = _nano()
    plan_src.convert(src_model)
    plan = wire(plan_src, [src_model]).calibrator.plan  # uniform hadamard; make one layer differ
    plan["layers"]["layers.0.attention.wq"]["modes"] = {s: "none" for s in ("forward_y", "backward_gx", "backward_gw")}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    dump = tmp_path / "dump"
    dump.mkdir()
    jc = _job_config(
        **{"calibration.use_HT_calibration": False, "calibration.plan_file": str(plan_file), "quant_error_freq": 2}
    )
    jc.job.dump_folder = str(dump)
    conv = AdaHOPConverter(jc, None)
    conv.convert(model)
    assert conv.converted and len(conv.layers) == 14
    _no_wiring(conv, model, dump)
    wq = model.layers["0"].attention.wq
    assert wq.modes["forward_y"] == "hadamard"  # the uniform mode: the plan is the wiring's
    wiring = wire(conv, [model])
    assert conv.wiring is wiring and wq.modes["forward_y"] == "none"
    assert conv.calibrator.plan["source"] == f"plan_file:{plan_file}" and conv.qerr is not None
    assert all(layer.observer is not None for layer in conv.layers.values())


def test_unwired_converter_wires_itself_at_its_first_hook(tmp_path):
    """torchtitan's own Trainer wires nothing: the first post_optimizer_hook wires, its step unobserved (closes no
    calibration step); calibration then runs over the next calibration_steps steps."""
    model = _nano()
    jc = _job_config(**{"calibration.calibration_steps": 2})
    jc.job.dump_folder = str(tmp_path)
    conv = AdaHOPConverter(jc, None)
    conv.convert(model)
    tokens = torch.randint(0, 8192, (2, 64))
    votes = []
    for _ in range(3):
        model(tokens).float().logsumexp(-1).mean().backward()
        conv.post_optimizer_hook(model)  # torchtitan may pass one module
        votes.append((conv.calibrator.calibrating, conv.calibrator.step, float(conv.calibrator.votes.sum())))
    assert votes == [(True, 0, 0.0), (True, 1, 14 * 3), (False, 2, 2 * 14 * 3)]
    assert conv.wiring.current_step() == 3 and (tmp_path / "adahop_plan.json").is_file()


def test_wiring_keeps_the_model_parts_layers():
    """Pipeline stages: the wiring (calibration, observers) keeps the layers of its model parts; the converter
    still lists every layer it converted."""
    model = _nano()
    conv = AdaHOPConverter(_job_config(), None)
    conv.convert(model)
    wiring = wire(conv, [model.layers["1"]])
    assert sorted(wiring.layers) == sorted(f for f in conv.layers if f.startswith("layers.1."))
    assert len(conv.layers) == 14 and len(wiring.layers) == 7
    assert model.layers["0"].attention.wq.observer is None and model.layers["1"].attention.wq.observer is not None


def test_wire_before_convert_refused():
    conv = AdaHOPConverter(_job_config(), None)
    with pytest.raises(RuntimeError, match="converted nothing"):
        wire(conv, [])


def test_converter_owns_the_fast_path_state_and_activates_it():
    """The kernels' counters, row slots, launch choices and the reference switch live in the converter's
    FastPathState (adahop.kernels.state), active once it converts a model; reference_only sets its switch."""
    from adahop import backend
    from adahop.kernels import gemm, state

    before = state.active()
    gemms_before = before.stats["gemms"]
    try:
        conv = AdaHOPConverter(_job_config(), None)
        forced_config = _job_config()
        forced_config.quantize.linear.mx.kernels.reference_only = True
        forced = AdaHOPConverter(forced_config, None)
        assert not conv.fast_path.force_reference and forced.fast_path.force_reference
        assert state.active() is before  # nothing changes before a model is converted
        conv.convert(_nano())
        assert state.active() is conv.fast_path and not backend.reference_forced()
        gemm.stats()["gemms"] += 3
        assert conv.fast_path.stats["gemms"] == 3 and before.stats["gemms"] == gemms_before
        forced.convert(_nano())
        assert state.active() is forced.fast_path and backend.reference_forced()
        assert gemm.stats()["gemms"] == 0  # another job's counters start at zero
        assert not backend.fast_device(torch.device("cuda", 0))  # the reference on every device
    finally:
        state.activate(before)
