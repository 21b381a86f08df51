"""CPU stand-ins so that upstream torchtitan 0.2.2 runs on a machine without an accelerator.

torchtitan picks its device at import of ``torchtitan.tools.utils``:
``device_type = torch._utils._get_available_device_type() or "cuda"`` and
``device_module = torch._utils._get_device_module(device_type)``. On a CPU-only machine that says
"cuda". We make it say "cpu" and hand torchtitan a *stand-in* device module (``CpuDeviceModule``)
that forwards to ``torch.cpu`` and adds the ``torch.cuda``-style calls torchtitan makes
(memory stats, device properties, ``current_device() -> 0`` for ``barrier(device_ids=...)``).

``torch`` itself is never modified permanently: ``torch._utils`` is patched only while torchtitan is
first imported; if torchtitan was imported before us, the module attributes are rewritten instead.
Nothing is patched when an accelerator is present.
"""

from __future__ import annotations

import sys
import types
from collections import namedtuple

import torch

_DeviceProps = namedtuple("_DeviceProps", ["name", "total_memory", "multi_processor_count"])

# modules of torchtitan that bind `device_type` / `device_module` at import time
_BINDING_MODULES = (
    "torchtitan.tools.utils",
    "torchtitan.components.metrics",
    "torchtitan.distributed.parallel_dims",
    "torchtitan.distributed.utils",
    "torchtitan.tools.profiling",
)


def _total_memory() -> int:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _peak_rss() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # pragma: no cover
        return 0


class _Memory(types.SimpleNamespace):
    pass


class CpuDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style functions torchtitan calls."""

    def __init__(self):
        super().__init__("adahop_cpu_device_module")
        self.memory = _Memory(
            empty_cache=lambda: None,
            _record_memory_history=lambda *a, **k: None,
            _snapshot=lambda *a, **k: {},
        )

    def __getattr__(self, name):  # everything else: torch.cpu
        return getattr(torch.cpu, name)

    # -- device identity -------------------------------------------------------------------------
    @staticmethod
    def current_device() -> int:
        # torch.cpu.current_device() returns "cpu", which barrier(device_ids=[...]) rejects
        return 0

    @staticmethod
    def set_device(device) -> None:
        return None

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def synchronize(device=None) -> None:
        return None

    @staticmethod
    def get_device_name(device=None) -> str:
        import platform

        return f"CPU ({platform.processor() or platform.machine()})"

    @staticmethod
    def get_device_properties(device=None):
        import os

        return _DeviceProps(CpuDeviceModule.get_device_name(), _total_memory(), os.cpu_count() or 1)

    # -- memory stats (process RSS stands in for the allocator's peak) ----------------------------
    @staticmethod
    def memory_stats(device=None) -> dict:
        peak = _peak_rss()
        return {
            "active_bytes.all.peak": peak,
            "reserved_bytes.all.peak": peak,
            "num_alloc_retries": 0,
            "num_ooms": 0,
        }

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def set_stream(stream) -> None:
        return None


_CPU_MODULE: CpuDeviceModule | None = None


def cpu_device_module() -> CpuDeviceModule:
    global _CPU_MODULE
    if _CPU_MODULE is None:
        _CPU_MODULE = CpuDeviceModule()
    return _CPU_MODULE


def has_accelerator() -> bool:
    from torch._utils import _get_available_device_type

    return _get_available_device_type() is not None


class _TorchWithIntegerHistc(types.ModuleType):
    """``torch`` as seen by torchtitan's MoE module, with a CPU ``histc`` for integer inputs.

    The router counts tokens per expert with ``torch.histc`` on int64 expert indices, which has a CUDA
    kernel but no CPU one. Integer indices are exact in float32, so counting them as floats (bins of
    width 1) and casting back gives the same int64 counts as the CUDA kernel.
    """

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def histc(input, bins=100, min=0, max=0, *, out=None):  # noqa: A002 (torch's signature)
        if input.is_floating_point() or input.device.type != "cpu" or out is not None:
            return torch.histc(input, bins=bins, min=min, max=max, **({"out": out} if out is not None else {}))
        return torch.histc(input.float(), bins=bins, min=min, max=max).to(input.dtype)


def install_moe_histc_fallback() -> None:
    """Give torchtitan's MoE module (only) the integer-capable CPU histc above."""
    from torchtitan.models.moe import moe

    if not isinstance(moe.torch, _TorchWithIntegerHistc):
        moe.torch = _TorchWithIntegerHistc("torch")


def install_cpu_shims() -> bool:
    """Make torchtitan run on CPU when there is no accelerator. Returns True if shims were installed.

    Must run before anything imports ``torchtitan`` to cover every module; if torchtitan is already
    imported the bound names are rewritten in the known modules.
    """
    if has_accelerator():
        return False
    shim = cpu_device_module()
    if "torchtitan.tools.utils" not in sys.modules:
        import torch._utils as tu

        orig_type, orig_module = tu._get_available_device_type, tu._get_device_module

        def _type():
            return orig_type() or "cpu"

        def _module(device_type="cuda"):
            return shim if device_type == "cpu" else orig_module(device_type)

        tu._get_available_device_type, tu._get_device_module = _type, _module
        try:
            import torchtitan  # noqa: F401  (imports torchtitan.tools.utils and its users)
            import torchtitan.components.metrics  # noqa: F401
            import torchtitan.distributed.utils  # noqa: F401
            import torchtitan.tools.profiling  # noqa: F401
        finally:
            tu._get_available_device_type, tu._get_device_module = orig_type, orig_module
    # rewrite the bound names (covers "imported before us" and is a no-op check otherwise)
    for name in _BINDING_MODULES:
        mod = sys.modules.get(name)
        if mod is None:
            continue
        if hasattr(mod, "device_type"):
            mod.device_type = "cpu"
        if hasattr(mod, "device_module"):
            mod.device_module = shim
    install_moe_histc_fallback()
    from .cpu_sdpa_sharding import install_cpu_sdpa_sharding

    install_cpu_sdpa_sharding()
    return True
