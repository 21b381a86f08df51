"""MXFP4 grouped GEMM (MoE experts): ragged and empty groups against the float64 definition per group, and bit
for bit against one AdaHOP linear per group."""

import numpy as np
import pytest
import reference as ref
import torch

from adahop.grouped import MXFP4GroupedMM, mxfp4_grouped_mm
from adahop.linear import LinearRecipe, _apply
from adahop.modes import MODES

IN, OUT = 64, 96
COUNTS = [37, 0, 5, 64, 0, 1]  # ragged, empty, tiny, aligned
PAD_ROWS = 7  # alignment padding after the last group


def operands(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(COUNTS) + PAD_ROWS
    x = torch.randn(t, IN, generator=g)
    x[:, 3] *= 20
    w = torch.randn(len(COUNTS), OUT, IN, generator=g) * 0.1
    gy = torch.randn(t, OUT, generator=g)
    return x, w, gy


def pad_rows(a, multiple=32):
    n = -(-a.shape[0] // multiple) * multiple
    return np.concatenate([a, np.zeros((n - a.shape[0], a.shape[1]))], 0)


@pytest.mark.parametrize("mode", MODES)
def test_groups_match_per_group_definition(mode):
    x, w, gy = operands()
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    recipe = LinearRecipe(forward_y=mode, backward_gx=mode, backward_gw=mode, outlier_k=4)
    y = mxfp4_grouped_mm(xr, wr, torch.tensor(COUNTS), recipe)
    y.backward(gy)
    start = 0
    gw_mode = "hadamard" if mode == "inner_outlier_extract_left" else mode
    tol = 1e-5 if mode in ("none", "full_precision") else 1e-3
    for e, n in enumerate(COUNTS):
        xe, ge, we = (t.double().numpy() for t in (x[start : start + n], gy[start : start + n], w[e]))
        if n == 0:
            assert torch.all(wr.grad[e] == 0)
        else:
            for got, want in (
                (y[start : start + n], ref.gemm(xe, we, mode, k_out=4)),
                (xr.grad[start : start + n], ref.gemm(ge, we.T, mode, k_out=4)),
                (wr.grad[e], ref.gemm(pad_rows(ge).T, pad_rows(xe).T, gw_mode, k_out=4)),
            ):
                want = torch.from_numpy(want)
                assert ((got.double() - want).norm() / want.norm()).item() < tol
        start += n
    assert torch.all(y[start:] == 0) and torch.all(xr.grad[start:] == 0)


def test_all_groups_empty():
    x, w, gy = operands()
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = mxfp4_grouped_mm(xr, wr, [0] * len(COUNTS), LinearRecipe())
    y.backward(gy)
    assert torch.all(y == 0) and torch.all(wr.grad == 0) and torch.all(xr.grad == 0)


def test_bad_group_sizes_refused():
    x, w, _ = operands()
    with pytest.raises(ValueError, match="group sizes"):
        mxfp4_grouped_mm(x, w, [1000, 0, 0, 0, 0, 0], LinearRecipe())
    with pytest.raises(ValueError, match="6 weight groups"):
        mxfp4_grouped_mm(x, w, [1, 2], LinearRecipe())


def test_module_observes_and_switches_modes():
    x, w, gy = operands()
    mod = MXFP4GroupedMM(LinearRecipe())
    seen = {}
    mod.observer = lambda name, t: seen.setdefault(name, tuple(t.shape))
    xr = x.clone().requires_grad_(True)
    mod(xr, w, torch.tensor(COUNTS)).backward(gy)
    assert seen == {"x": tuple(x.shape), "w": (len(COUNTS) * OUT, IN), "g": tuple(gy.shape)}
    mod.set_modes(forward_y="full_precision")
    assert mod.modes["forward_y"] == "full_precision" and mod.modes["backward_gx"] == "hadamard"


def per_group_linear(x, w, counts, recipe):
    """The grouped GEMM as one AdaHOP linear per group (adahop.linear's own op), padding rows zero."""
    outs, start = [], 0
    for e, n in enumerate(counts):
        outs.append(_apply(x[start : start + n], w[e], recipe))
        start += n
    return torch.cat(outs + [x.new_zeros(x.shape[0] - start, w.shape[1])])


@pytest.mark.parametrize(
    "counts, hadamard_size, randomized",
    [
        (COUNTS, 32, False),
        (COUNTS, 64, True),  # groups padded to 64 tokens, random signs of each group's padded length
        ([1] * 6, 64, False),  # the most padding six groups can have: the saved buffers are full
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_groups_give_the_bits_of_one_linear_per_group(mode, counts, hadamard_size, randomized):
    """What the grouped ops keep for backward (flat packed buffers sized from the shapes) is read back per group
    as the linear keeps it: output and gradients bit for bit."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(sum(counts) + PAD_ROWS, IN, generator=g)
    x[:, 3] *= 20
    w = torch.randn(len(counts), 128, IN, generator=g) * 0.1  # both dims multiples of the Hadamard sizes
    gy = torch.randn(x.shape[0], 128, generator=g)
    recipe = LinearRecipe(
        forward_y=mode,
        backward_gx=mode,
        backward_gw=mode,
        outlier_k=4,
        hadamard_size=hadamard_size,
        randomized_hadamard=randomized,
        hadamard_seed=5,
    )
    got, want = [], []
    for fn, out in (
        (lambda a, b: mxfp4_grouped_mm(a, b, torch.tensor(counts), recipe), got),
        (lambda a, b: per_group_linear(a, b, counts, recipe), want),
    ):
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = fn(xr, wr)
        y.backward(gy)
        out += [y.detach(), xr.grad, wr.grad]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "mode, keeps_x, keeps_w",
    [
        ("hadamard", False, True),
        ("inner_outlier_extract_right", False, False),
        ("full_precision", True, True),
    ],
)
def test_backward_keeps_packed_x_and_the_weight_by_reference(mode, keeps_x, keeps_w):
    """x is kept packed (full_precision: x itself), W by reference (OE-right for gx: its packed copy instead)."""
    x, w, gy = operands()
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    recipe = LinearRecipe(mode, mode, mode, outlier_k=4)
    y, saved = saved_for_backward(lambda: mxfp4_grouped_mm(xr, wr, torch.tensor(COUNTS), recipe))
    assert any(t is xr for t in saved) == keeps_x and any(t is wr for t in saved) == keeps_w
    if not keeps_x:
        packed_bytes = sum(t.numel() for t in saved if t.dtype == torch.uint8)
        # codes and scales of every padded group: 0.53 bytes a value, within the shape-bound capacity
        assert packed_bytes >= IN * sum(-(-c // 32) * 32 for c in COUNTS) * (1 / 2 + 1 / 32)
        assert packed_bytes <= IN * (x.shape[0] + len(COUNTS) * 31) * (1 / 2 + 1 / 32) + OUT * IN * len(COUNTS)
    y.backward(gy)
    assert torch.isfinite(wr.grad).all()


def saved_for_backward(fn):
    """fn()'s result and the tensors autograd saved for its backward."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return fn(), saved
