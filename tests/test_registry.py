"""What adahop.titan.setup() registers in upstream torchtitan's registries: quantize.linear.mx and
quantize.linear.adahop name the AdaHOP converter, quantize.linear.mxfp8 upstream's MXFP8 one, and no other
upstream entry (converters, train specs, datasets) changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import adahop.titan  # noqa: F401  (this process: setup() for the job-config tests below)

REPO = Path(__file__).resolve().parents[1]

# run in a fresh interpreter: upstream's registries as torchtitan fills them, then after adahop.titan's setup()
SNAPSHOT = r"""
import json
import torchtitan  # noqa: F401  (registers upstream's converters)
from torchtitan.hf_datasets.text_datasets import DATASETS
from torchtitan.protocols import model_converter as mc, train_spec as ts

def snapshot():
    return {"converters": dict(mc._registry_model_converter_cls), "train_specs": dict(ts._extra_train_specs),
            "datasets": dict(DATASETS)}

def name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"

before = snapshot()
import adahop.titan  # noqa: E402  (runs setup())
adahop.titan.setup()  # idempotent: a second call changes nothing
after = snapshot()
converters = after["converters"]
print(json.dumps({
    "resolve": {k: name(v) for k, v in converters.items()},
    "mxfp8_is_upstreams_mx": converters.get("quantize.linear.mxfp8") is before["converters"]["quantize.linear.mx"],
    "changed": {reg: sorted(k for k, v in before[reg].items() if after[reg].get(k) is not v) for reg in before},
    "added": {reg: sorted(set(after[reg]) - set(before[reg])) for reg in before},
}))
"""


@pytest.fixture(scope="module")
def registries():
    out = subprocess.run([sys.executable, "-c", SNAPSHOT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mx_and_adahop_resolve_to_adahop(registries):
    for name in ("quantize.linear.mx", "quantize.linear.adahop"):
        assert registries["resolve"][name] == "adahop.converter.AdaHOPConverter", name


def test_mxfp8_resolves_to_upstreams_converter(registries):
    assert registries["resolve"]["quantize.linear.mxfp8"] == "torchtitan.components.quantization.mx.MXLinearConverter"
    assert registries["mxfp8_is_upstreams_mx"]


def test_no_other_upstream_entry_changed(registries):
    assert registries["changed"] == {"converters": ["quantize.linear.mx"], "train_specs": [], "datasets": []}
    assert registries["added"]["converters"] == ["quantize.linear.adahop", "quantize.linear.mxfp8"]
    assert set(registries["added"]["train_specs"]) == {"adahop_llama3", "adahop_qwen3"}
    assert {"adahop_text", "adahop_text_val"} <= set(registries["added"]["datasets"])


# ---------------------------------------------------------------- the names in a job config


def _job_config(*converters):
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(
        [
            "--job.custom_config_module",
            "adahop.config",
            "--model.name",
            "adahop_llama3",
            "--model.flavor",
            "nano",
            "--model.converters",
            ",".join(converters),
            "--training.seq_len",
            "64",
        ]
    )


def test_adahop_name_builds_and_converts_through_torchtitan():
    """torchtitan's own container (Trainer.__init__ builds it) makes the AdaHOP converter from either name."""
    import dataclasses

    import torch
    from torchtitan.protocols.model_converter import build_model_converters
    from torchtitan.protocols.train_spec import get_train_spec

    from adahop.config import converter_enabled
    from adahop.converter import AdaHOPConverter
    from adahop.linear import AdaHOPLinear

    spec = get_train_spec("adahop_llama3")
    for name in ("quantize.linear.adahop", "quantize.linear.mx"):
        jc = _job_config(name)
        assert converter_enabled(jc), name  # so the adahop checks run for it too
        container = build_model_converters(jc, None)
        assert [type(c) for c in container.converters] == [AdaHOPConverter]
        with torch.device("meta"):
            model = spec.model_cls(dataclasses.replace(spec.model_args["nano"], max_seq_len=64))
        container.convert(model)
        assert isinstance(model.layers["0"].attention.wq, AdaHOPLinear), name


def test_both_adahop_names_refused():
    from adahop.config import ConfigError, validate_mx

    with pytest.raises(ConfigError) as e:
        validate_mx(_job_config("quantize.linear.mx", "quantize.linear.adahop"))
    assert e.value.key == "model.converters" and "twice" in str(e.value), str(e.value)
    validate_mx(_job_config("quantize.linear.adahop", "quantize.grouped_mm.float8"))  # another kind of converter
