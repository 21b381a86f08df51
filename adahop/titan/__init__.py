"""Glue between adahop and upstream torchtitan 0.2.2, through its extension points; the few patches of upstream
state, each with why it is needed, are listed in docs/training.md ("Patches of upstream state").

``setup()`` (idempotent; also run on ``import adahop.titan``, so the module can be given to
torchtitan's own trainer as ``--experimental.custom_import adahop.titan``):

1. CPU stand-ins for the accelerator device module when there is no accelerator
   (adahop.titan.cpu) -- done before torchtitan is imported when possible;
2. the AdaHOP converter under ``quantize.linear.adahop`` and ``quantize.linear.mx``, upstream's MXFP8 converter
   under ``quantize.linear.mxfp8`` (register_converters: the one entry of upstream's registry it overrides);
3. the "adahop_llama3" train spec (upstream llama3 + tiny/125M/1B/3B flavors, gloo-safe FSDP);
4. the embedded datasets "adahop_text" / "adahop_text_val" (adahop.data.datasets.register_datasets);
5. quieter, more useful logs (adahop.titan.logs): log / warnings filters for messages that alarm without
   helping, and our train specs' metrics processor (steps/s, time left, mfu n/a without known peak FLOPS).
"""

from __future__ import annotations

import logging

from adahop.titan.cpu import install_cpu_shims

_DONE = False
#: where upstream's torchao MXFP8 converter (registered by torchtitan as quantize.linear.mx) stays reachable
UPSTREAM_MXFP8_NAME = "quantize.linear.mxfp8"
_log = logging.getLogger(__name__)


def register_converters() -> None:
    """``quantize.linear.adahop`` -> AdaHOPConverter and ``quantize.linear.mxfp8`` -> upstream's MXFP8 converter,
    through torchtitan's public register_model_converter; and the one override of an upstream registry entry:
    ``quantize.linear.mx`` -> AdaHOPConverter.

    The override is needed because ``quantize.linear.mx`` is the name the user's configs and the AdaHOP seed
    repository use, upstream registers its torchao MXFP8 converter (Blackwell only) under it, and
    register_model_converter refuses a name twice. That converter stays reachable as ``quantize.linear.mxfp8``.
    Idempotent."""
    from torchtitan.protocols import model_converter as mc

    from adahop.config import ADAHOP_CONVERTER_NAME, CONVERTER_NAME
    from adahop.converter import AdaHOPConverter

    registry = mc._registry_model_converter_cls  # read; written only for the override below
    if registry.get(ADAHOP_CONVERTER_NAME) is not AdaHOPConverter:
        mc.register_model_converter(AdaHOPConverter, ADAHOP_CONVERTER_NAME)  # refuses a name another one took
    upstream_mx = registry.get(CONVERTER_NAME)
    if upstream_mx is not AdaHOPConverter:
        if upstream_mx is not None:
            mc.register_model_converter(upstream_mx, UPSTREAM_MXFP8_NAME)
        registry[CONVERTER_NAME] = AdaHOPConverter  # the override (see above)


def register_datasets() -> bool:
    try:
        from adahop.data.datasets import register_datasets as _reg
    except ImportError as e:  # the data package is optional for the glue itself
        _log.warning(f"[adahop] embedded datasets not registered: {e}")
        return False
    _reg()
    return True


def use_adahop_metrics(names: list[str]) -> None:
    """Our train specs log through adahop.titan.logs.AdaHOPMetricsProcessor (torchtitan's
    TrainSpec.build_metrics_processor_fn), unless a spec sets its own."""
    from torchtitan.protocols.train_spec import get_train_spec

    from adahop.titan.logs import build_metrics_processor

    for name in names:
        spec = get_train_spec(name)
        if spec.build_metrics_processor_fn is None:
            spec.build_metrics_processor_fn = build_metrics_processor


def setup() -> None:
    global _DONE
    if _DONE:
        return
    install_cpu_shims()
    import torchtitan  # noqa: F401  (registers upstream converters first)

    register_converters()
    from adahop.models import register_models
    from adahop.titan.logs import quiet_messages

    quiet_messages()
    use_adahop_metrics(register_models())
    register_datasets()
    _DONE = True


setup()
