"""The AdaHOP linear: each mode of each GEMM slot against the float64 definition in tests/reference.py."""

import numpy as np
import pytest
import reference as ref
import torch

from adahop.linear import AdaHOPLinear, LinearRecipe, mxfp4_linear
from adahop.modes import MODES, SLOTS

T, IN, OUT, K_OUT = 80, 128, 96, 8  # 80 tokens: the weight-gradient GEMM pads K to 96


def operands(seed=0, planted=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, IN, generator=g)
    w = torch.randn(OUT, IN, generator=g) * 0.05
    gy = torch.randn(T, OUT, generator=g) * 1e-3
    if planted:  # a mix of every pattern so that extraction has something to pick
        x[:, 5] *= 30
        x[11] *= 10
        w[:, 17] *= 20
        gy[3] *= 40
        gy[:, 40] *= 8
    return x, w, gy


def run(x, w, gy, **modes):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    y = mxfp4_linear(x, w, outlier_k=K_OUT, **modes)
    y.backward(gy)
    return y.detach(), x.grad, w.grad


def pad_rows(a, n):
    return np.concatenate([a, np.zeros((n - a.shape[0], a.shape[1]))], 0)


def expected(slot, mode, x, w, gy):
    x, w, gy = (t.double().numpy() for t in (x, w, gy))
    if slot == "forward_y":
        return ref.gemm(x, w, mode, k_out=K_OUT)
    if slot == "backward_gx":
        return ref.gemm(gy, w.T, mode, k_out=K_OUT)
    mode = "hadamard" if mode == "inner_outlier_extract_left" else mode  # documented fallback
    return ref.gemm(pad_rows(gy, 96).T, pad_rows(x, 96).T, mode, k_out=K_OUT)


def rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("slot", SLOTS)
def test_slot_matches_definition(slot, mode):
    x, w, gy = operands()
    y, gx, gw = run(x, w, gy, **{slot: mode})
    got = {"forward_y": y, "backward_gx": gx, "backward_gw": gw}[slot]
    want = expected(slot, mode, x, w, gy)
    # float32 butterflies vs the float64 matrix may flip a rare element to its grid neighbour
    tol = 1e-5 if mode in ("none", "full_precision") else 1e-3
    assert rel(got, want) < tol
    # and the check can tell modes apart: the definition of every other mode is further away
    for other in MODES:
        if other != mode and not (
            slot == "backward_gw" and {mode, other} == {"hadamard", "inner_outlier_extract_left"}
        ):
            assert rel(got, expected(slot, other, x, w, gy)) > 10 * tol


def test_randomized_hadamard_uses_fixed_signs_per_slot():
    x, w, gy = operands()
    y, _, _ = run(x, w, gy, randomized_hadamard=True)
    recipe = LinearRecipe(randomized_hadamard=True)
    signs = recipe.signs_for("forward_y", IN, "cpu").double().numpy()
    want = (
        ref.fake_quant(ref.block_hadamard(x.double().numpy(), 32, signs))
        @ ref.fake_quant(ref.block_hadamard(w.double().numpy(), 32, signs)).T
    )
    assert rel(y, want) < 3e-3
    assert rel(y, expected("forward_y", "hadamard", x, w, gy)) > 3e-2
    y2, _, _ = run(x, w, gy, randomized_hadamard=True)
    assert torch.equal(y, y2)


def test_extracted_rows_and_columns_reach_bf16_accuracy():
    x, w, gy = operands()
    exact = x.double() @ w.double().t()
    y_left, _, _ = run(x, w, gy, forward_y="inner_outlier_extract_left")
    rows = ref.top_rows(x.double().numpy(), K_OUT)
    assert 11 in rows
    row_err = ((y_left.double() - exact)[rows].norm(dim=1) / exact[rows].norm(dim=1)).max()
    assert row_err < 1e-2
    rest = np.setdiff1d(np.arange(T), rows)
    assert rel(y_left[rest], exact[rest]) > 2e-2  # the rest is MXFP4
    y_right, _, _ = run(x, w, gy, forward_y="inner_outlier_extract_right")
    cols = ref.top_rows(w.double().numpy(), K_OUT)
    col_err = ((y_right.double() - exact)[:, cols].norm(dim=0) / exact[:, cols].norm(dim=0)).max()
    assert col_err < 1e-2


def test_hadamard_beats_none_on_outliers_along_k():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(256, 256, generator=g)
    x[:, 3::32] *= 20  # activation channels: columns of x, i.e. along K of the forward GEMM
    w = torch.randn(128, 256, generator=g)
    exact = x.double() @ w.double().t()
    err = {m: rel(mxfp4_linear(x, w, forward_y=m), exact) for m in ("hadamard", "none")}
    assert err["hadamard"] < 0.8 * err["none"]


def test_sr_gradients_are_unbiased():
    x, w, gy = operands(planted=False)
    torch.manual_seed(0)
    reps = [run(x, w, gy, use_sr_grad=True)[1].double() for _ in range(200)]
    # gx = SR(g H) @ Q(W^T H)^T; E[SR(g H)] = g H, so the mean converges to g H @ Q(W^T H)^T
    g_h = ref.block_hadamard(gy.double().numpy(), 32)
    target = torch.from_numpy(g_h @ ref.fake_quant(ref.block_hadamard(w.double().numpy().T, 32)).T)
    single = rel(reps[0], target)
    assert single > 1e-2  # one draw is noisy
    assert rel(torch.stack(reps).mean(0), target) < single / 8  # 200 draws: ~14x less if unbiased
    nearest = run(x, w, gy)[1]
    assert rel(nearest, target) > 0  # SR is not secretly nearest rounding
    assert not torch.equal(reps[0], reps[1])


@pytest.mark.parametrize("mode", ["hadamard", "none"])
def test_saved_for_backward_is_packed_mxfp4(mode):
    x = torch.randn(96, IN, requires_grad=True)  # tokens a multiple of 32: no padding
    w = torch.randn(OUT, IN, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mxfp4_linear(x, w, forward_y=mode, backward_gx=mode, backward_gw=mode)
    # the weight is kept by reference (no copy, like nn.Linear); everything else is packed MXFP4 of x
    added = [t for t in saved if t is not w]
    assert any(t is w for t in saved) and all(t.dtype == torch.uint8 for t in added)
    assert 2 * x.numel() / sum(t.numel() for t in added) > 3.5


def test_bad_mode_and_shapes_refused():
    x, w, _ = operands()
    with pytest.raises(ValueError, match="backward_gx: unknown mode 'hadamard2'.*inner_outlier_extract_left"):
        mxfp4_linear(x, w, backward_gx="hadamard2")
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4_linear(torch.randn(4, 40), torch.randn(64, 40))
    with pytest.raises(ValueError, match="hadamard_size"):
        mxfp4_linear(x, w, hadamard_size=24)
    with pytest.raises(ValueError, match="outlier_k"):
        mxfp4_linear(x, w, outlier_k=-1)


def test_bf16_inputs_and_leading_dims():
    x, w, gy = operands()
    xb = x.reshape(4, 20, IN).bfloat16().requires_grad_(True)
    wb = w.bfloat16().requires_grad_(True)
    y = mxfp4_linear(xb, wb)
    assert y.shape == (4, 20, OUT) and y.dtype == torch.bfloat16
    y.backward(gy.reshape(4, 20, OUT).bfloat16())
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    want = expected("forward_y", "hadamard", xb.detach().float().reshape(T, IN), wb.detach().float(), gy)
    assert rel(y.float().reshape(T, OUT), want) < 5e-3


def test_module_shares_parameters_and_observes():
    lin = torch.nn.Linear(IN, OUT)
    mod = AdaHOPLinear.from_linear(lin, forward_y="none")
    assert mod.weight is lin.weight and mod.bias is lin.bias
    assert mod.modes == {"forward_y": "none", "backward_gx": "hadamard", "backward_gw": "hadamard"}
    seen = {}
    mod.observer = lambda name, t: seen.setdefault(name, t.shape)
    x = torch.randn(2, 40, IN)
    y = mod(x)
    y.sum().backward()
    assert seen == {"x": (80, IN), "w": (OUT, IN), "g": (80, OUT)}
    torch.testing.assert_close(y, mxfp4_linear(x, lin.weight, forward_y="none") + lin.bias)
    mod.set_modes(backward_gw="full_precision")
    assert mod.modes["backward_gw"] == "full_precision" and mod.modes["forward_y"] == "none"
    with pytest.raises(ValueError, match="forward_y"):
        mod.set_modes(forward_y="bogus")
    assert "forward_y=none" in repr(mod)


def test_nan_in_input_stays_visible():
    x, w, gy = operands()
    x[0, 0] = float("nan")
    y, _, _ = run(x, w, gy)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1:]).all()


def test_no_grad_forward_equals_training_forward_and_saves_nothing():
    x, w, _ = operands()
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y_eval = mxfp4_linear(x.requires_grad_(True), w, forward_y="inner_outlier_extract_right", outlier_k=K_OUT)
    y_train = mxfp4_linear(x, w.requires_grad_(True), forward_y="inner_outlier_extract_right", outlier_k=K_OUT)
    assert torch.equal(y_eval, y_train.detach()) and not saved and y_train.requires_grad


@pytest.mark.parametrize("mode", ["inner_outlier_extract_left", "inner_outlier_extract_right"])
def test_extraction_takes_its_rows_as_a_set(mode, monkeypatch):
    """top_rows imposes no order on its indices (adahop/outliers.py): the same rows in any order give the
    same bits in every slot (zeroed rows, gather and index_add_ of distinct rows)."""
    import adahop.linear as linear

    x, w, gy = operands(seed=3)
    modes = {slot: mode for slot in SLOTS}
    want = run(x, w, gy, **modes)
    real = linear.top_rows
    monkeypatch.setattr(linear, "top_rows", lambda t, k: real(t, k).sort(descending=True).values)
    got_desc = run(x, w, gy, **modes)
    perm = torch.Generator().manual_seed(1)
    monkeypatch.setattr(
        linear, "top_rows", lambda t, k: (lambda r: r[torch.randperm(r.numel(), generator=perm)])(real(t, k))
    )
    got_shuffled = run(x, w, gy, **modes)
    for got in (got_desc, got_shuffled):
        for a, b in zip(want, got):
            assert torch.equal(a, b)
