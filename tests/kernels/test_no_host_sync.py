"""No host synchronization inside a training step's forward and backward on the fast path: inside the deferred
check (adahop.kernels.deferred, how the trainer runs a step) no op of any mode reads a device value on the host
(`.item()`, `.tolist()`, `.cpu()`, a data-dependent `nonzero`). Counted with the host-work counter of
scripts/host_ops_count.py: the fast path forced on, the kernels on the interpreter without a GPU."""

import importlib.util

import pytest

from adahop.modes import MODES

SYNCING = ("_local_scalar_dense", "nonzero")
OE_R = "inner_outlier_extract_right"


def _host_ops_count():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "host_ops_count.py"
    spec = importlib.util.spec_from_file_location("host_ops_count", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", MODES)
def test_forward_and_backward_read_nothing_back_from_the_device(mode):
    by_op: dict = {}
    _host_ops_count().count_linear(mode, 256, 256, by_op)
    ops = by_op["all"]
    assert ops, "the counter saw no op: it would not see a sync either"
    syncing = {name: n for name, n in ops.items() if name in SYNCING or name.startswith("host_read:")}
    assert not syncing, syncing


def test_the_counter_sees_a_host_read():
    """The same counter flags a GEMM whose deficient-block count is read per GEMM (outside the deferred check)."""
    import torch

    from adahop import backend
    from adahop.kernels import deferred

    module = _host_ops_count()
    counts = module.Counts()
    real = backend.fast_device
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # without a GPU the kernels run on the interpreter
    try:
        if dev == "cpu":
            backend.fast_device = lambda device: True
        x = torch.randn(128, 256, dtype=torch.bfloat16, device=dev)
        with counts:
            a, _ = backend.quantize(x, hadamard_size=32)
            b, _ = backend.quantize(x, hadamard_size=32)
            assert deferred.counter_for(x.device) is None
            backend.matmul(a, b, torch.float32)
    finally:
        backend.fast_device = real
    assert counts.ops.get("host_read:tolist", 0) > 0, counts.ops


@pytest.mark.parametrize(
    "modes",
    [
        ("hadamard",) * 3,
        ("none",) * 3,
        ("full_precision",) * 3,
        ("none", "hadamard", OE_R),
        ("hadamard", "inner_outlier_extract_left", OE_R),
    ],
)
def test_grouped_gemms_in_one_call_read_nothing_back_from_the_device(modes):
    """MoE experts (adahop.grouped_mm, bf16): forward and backward of every group in one call, the group sizes
    kept on the device, the quantize kernels on the fast path (the interpreter without a GPU)."""
    import torch

    from adahop import backend, grouped_mm
    from adahop.grouped import mxfp4_grouped_mm
    from adahop.kernels import deferred
    from adahop.linear import LinearRecipe

    counts = _host_ops_count().Counts()
    real = backend.fast_device
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([37, 0, 5, 64], device=dev)
    x = torch.randn(113, 128, generator=g).to(dev, torch.bfloat16).requires_grad_()
    w = (torch.randn(4, 128, 128, generator=g) / 11).to(dev, torch.bfloat16).requires_grad_()
    recipe = LinearRecipe(*modes)
    assert all(
        grouped_mm.in_one_call(recipe, slot, x.dtype, w.dtype) for slot in ("forward_y", "backward_gx", "backward_gw")
    )
    try:
        if dev == "cpu":
            backend.fast_device = lambda device: True
        with deferred.deferred_check(torch.device(dev)), counts:
            mxfp4_grouped_mm(x, w, sizes, recipe).sum().backward()
    finally:
        backend.fast_device = real
    assert counts.ops, "the counter saw no op: it would not see a sync either"
    syncing = {name: n for name, n in counts.ops.items() if name in SYNCING or name.startswith("host_read:")}
    assert not syncing, syncing
    assert torch.isfinite(w.grad).all() and torch.isfinite(x.grad).all()
