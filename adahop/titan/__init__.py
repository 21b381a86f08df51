"""Glue between adahop and upstream torchtitan 0.2.2, through its extension points only.

``setup()`` (idempotent; also run on ``import adahop.titan``, so the module can be given to
torchtitan's own trainer as ``--experimental.custom_import adahop.titan``):

1. CPU stand-ins for the accelerator device module when there is no accelerator
   (adahop.titan.cpu) -- done before torchtitan is imported when possible;
2. our ``quantize.linear.mx`` converter replaces upstream's entry (torchao MXFP8, Blackwell-only) in
   ``torchtitan.protocols.model_converter._registry_model_converter_cls``;
3. the "adahop_llama3" train spec (upstream llama3 + tiny/125M/1B/3B flavors, gloo-safe FSDP);
4. the embedded datasets "adahop_text" / "adahop_text_val" (adahop.data.datasets.register_datasets);
5. quieter, more useful logs (adahop.titan.logs): log / warnings filters for messages that alarm without
   helping, and our train specs' metrics processor (steps/s, time left, mfu n/a without known peak FLOPS).
"""

from __future__ import annotations

import logging

from adahop.titan.cpu import install_cpu_shims

_DONE = False
_log = logging.getLogger(__name__)


def register_converter() -> None:
    from torchtitan.protocols import model_converter as mc

    from adahop.config import CONVERTER_NAME
    from adahop.converter import AdaHOPConverter

    # upstream registers its torchao MXFP8 converter under this name and register_model_converter
    # refuses a second registration, so we replace the registry entry.
    mc._registry_model_converter_cls[CONVERTER_NAME] = AdaHOPConverter


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

    register_converter()
    from adahop.models import register_models
    from adahop.titan.logs import quiet_messages

    quiet_messages()
    use_adahop_metrics(register_models())
    register_datasets()
    _DONE = True


setup()
