"""Every expert group in one call (adahop.grouped_mm): the bits of the per-group loop of adahop.grouped, the float64
definition per group, the token layout against a plain restatement, adversarial values, invalid sizes with and
without the deferred check, and what backward keeps."""

import numpy as np
import pytest
import reference as ref
import torch

from adahop import grouped_mm
from adahop.grouped import mxfp4_grouped_mm
from adahop.kernels import deferred
from adahop.linear import LinearRecipe
from adahop.modes import SLOTS

IN, OUT = 64, 128
COUNTS = [37, 0, 5, 64, 0, 1]  # ragged, empty, tiny, aligned
PAD_ROWS = 7  # rows past the last group (torchtitan's alignment padding)


def operands(counts=COUNTS, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    t = sum(counts) + PAD_ROWS
    x = torch.randn(t, IN, generator=g)
    x[:, 3] *= 20  # a channel outlier
    w = torch.randn(len(counts), OUT, IN, generator=g) * 0.1
    gy = torch.randn(t, OUT, generator=g)
    return x.to(dtype), w.to(dtype), gy.to(dtype)


ONE_CALL_PARTS = ("forward_y", "saved_x", "input_gradient", "weight_gradient")


@pytest.fixture
def one_call_spy(monkeypatch):
    """Counts the calls of the one-call path (so a test knows which path ran)."""
    calls = dict.fromkeys(ONE_CALL_PARTS, 0)
    for name in calls:
        real = getattr(grouped_mm, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(grouped_mm, name, spy)
    return calls


def run(x, w, gy, counts, recipe, per_group=False, monkeypatch=None):
    """(y, gx, gw) of the grouped GEMM; `per_group`: the loop of adahop.grouped instead of the one call."""
    if per_group:
        monkeypatch.setattr(grouped_mm, "in_one_call", lambda *a: False)
    try:
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = mxfp4_grouped_mm(xr, wr, torch.tensor(counts), recipe)
        y.backward(gy)
        return y.detach(), xr.grad, wr.grad
    finally:
        if per_group:
            monkeypatch.undo()


def assert_same_product(a, b, quantized: bool, what=""):
    """Two bf16 results of the same GEMM operands from two GEMM implementations. MXFP4 operands: every product
    has at most four significant bits and, for these inputs, the float32 sums are exact in any order, so the
    bits agree. BF16 operands (full_precision): the float32 sums round in another order, so each result may
    differ by one bf16 unit in the last place, and only a few do."""
    if quantized:
        assert torch.equal(a, b), (what, (a.float() - b.float()).abs().max())
        return
    diff = (a.float() - b.float()).abs()
    ulp = torch.maximum(a.float().abs(), b.float().abs()) * 2.0**-7
    assert torch.all(diff <= ulp), (what, diff.max())
    assert (diff > 0).float().mean() < 0.02, (what, (diff > 0).float().mean())


MODE_SETS = [
    ("hadamard",) * 3,
    ("none",) * 3,
    ("full_precision",) * 3,
    ("hadamard", "none", "full_precision"),
    ("none", "full_precision", "inner_outlier_extract_left"),  # OE-left's weight gradient runs hadamard
]


@pytest.mark.parametrize("modes", MODE_SETS)
@pytest.mark.parametrize(
    "counts, hadamard_size",
    [(COUNTS, 32), (COUNTS, 64), ([1] * 6, 64), ([0] * 6, 32), ([32, 64, 32, 0, 0, 0], 32)],
)
def test_one_call_gives_the_bits_of_the_per_group_loop(modes, counts, hadamard_size, one_call_spy, monkeypatch):
    x, w, gy = operands(counts)
    recipe = LinearRecipe(*modes, hadamard_size=hadamard_size, outlier_k=4)
    assert all(grouped_mm.in_one_call(recipe, slot, x.dtype, w.dtype) for slot in SLOTS)
    got = run(x, w, gy, counts, recipe)
    assert one_call_spy == dict.fromkeys(ONE_CALL_PARTS, 1) or recipe.mode("backward_gw") == "full_precision"
    calls = dict(one_call_spy)
    want = run(x, w, gy, counts, recipe, per_group=True, monkeypatch=monkeypatch)
    assert one_call_spy == calls, "the loop must not take the one-call path"
    for slot, a, b in zip(SLOTS, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, slot
        assert_same_product(a, b, recipe.mode(slot) != "full_precision", slot)
    end = sum(counts)
    assert torch.all(got[0][end:] == 0) and torch.all(got[1][end:] == 0)


@pytest.mark.parametrize("mode", ["hadamard", "none", "full_precision"])
def test_one_call_matches_the_float64_definition_per_group(mode, one_call_spy):
    """Against tests/reference.py (numpy float64, independent of the code under test), group by group."""
    x, w, gy = operands()
    y, gx, gw = run(x, w, gy, COUNTS, LinearRecipe(mode, mode, mode))
    assert one_call_spy["forward_y"] == 1
    start = 0
    for e, n in enumerate(COUNTS):
        if n == 0:
            assert torch.all(gw[e] == 0)
            continue
        xe, ge, we = (t.double().numpy() for t in (x[start : start + n], gy[start : start + n], w[e]))
        padded = -(-n // 32) * 32
        ge_p, xe_p = (np.concatenate([a, np.zeros((padded - n, a.shape[1]))]) for a in (ge, xe))
        for got, want in (
            (y[start : start + n], ref.gemm(xe, we, mode)),
            (gx[start : start + n], ref.gemm(ge, we.T, mode)),
            (gw[e], ref.gemm(ge_p.T, xe_p.T, mode)),
        ):
            want = torch.from_numpy(want)
            # the operands agree with the definition up to a rare tie the float32 Hadamard rounds the other
            # way; the output is rounded once to bf16 (2^-9 relative)
            assert ((got.double() - want).norm() / want.norm()).item() < 5e-3
        start += n


@pytest.mark.parametrize(
    "name, scale",
    [
        ("zeros", 0.0),
        ("tiny", 2.0**-100),
        ("subnormal products", 2.0**-125),
        ("huge", 2.0**100),
        ("ties", None),
        ("nonfinite", None),
    ],
)
def test_adversarial_values_give_the_bits_of_the_per_group_loop(name, scale, monkeypatch):
    """Zeros, exponents near bf16's ends, values on E2M1 rounding ties, NaN and inf rows: the dequantized bf16
    operands hold every MXFP4 value the per-group path multiplies. Where the products fall below float32's
    normal range (2^-126) a GEMM may round or flush them (the CPU's BF16 GEMM flushes): there the two paths
    agree to K * 2^-126, K terms each off by less than 2^-126."""
    x, w, gy = operands()
    if scale is not None:
        x = (x.float() * scale).to(torch.bfloat16)
    if name == "ties":  # midpoints of the E2M1 grid (block amax 6 puts the scale at 1)
        grid = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
        x = grid[torch.arange(x.numel()) % 8].reshape(x.shape).to(torch.bfloat16)
    if name == "nonfinite":
        x[5, 7], x[40, 0], x[50, 9] = float("nan"), float("inf"), float("-inf")
    for modes in (("none",) * 3, ("hadamard",) * 3):
        recipe = LinearRecipe(*modes)
        got = run(x, w, gy, COUNTS, recipe)
        want = run(x, w, gy, COUNTS, recipe, per_group=True, monkeypatch=monkeypatch)
        for slot, a, b in zip(SLOTS, got, want):
            assert torch.equal(a.isnan(), b.isnan()), (name, modes, slot)
            a, b = a.nan_to_num(), b.nan_to_num()
            if name == "subnormal products" and slot != "backward_gx":  # gx does not multiply x
                k = IN if slot == "forward_y" else x.shape[0]
                assert (a.float() - b.float()).abs().max() <= k * 2.0**-126, (modes, slot)
            else:
                assert_same_product(a, b, True, (name, modes, slot))


def test_token_layout_moves_each_group_to_a_whole_block():
    """Against a plain restatement: group e's i-th row lands at (sum of the earlier groups rounded up) + i."""
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        groups = int(torch.randint(1, 9, (1,), generator=g))
        counts = torch.randint(0, 70, (groups,), generator=g)
        counts[torch.rand(groups, generator=g) < 0.3] = 0
        tokens = int(counts.sum()) + int(torch.randint(0, 40, (1,), generator=g))
        multiple = [32, 64, 128][int(torch.randint(0, 3, (1,), generator=g))]
        dest, ends, capacity = grouped_mm.token_layout(counts, tokens, multiple)
        want, start = [], 0
        for c in counts.tolist():
            want += [start + i for i in range(c)]
            start += -(-c // multiple) * multiple
        want += [capacity] * (tokens - len(want))
        assert dest.tolist() == want
        assert ends[-1].item() == start <= capacity and capacity % 128 == 0


def test_token_capacity_holds_every_split():
    """Random splits of T rows into G groups (and the most padded one, a row per group) fit the capacity."""
    g = torch.Generator().manual_seed(2)
    for tokens, groups, multiple in ((114, 6, 32), (6, 6, 64), (0, 3, 32), (4096, 64, 128), (300, 4, 32)):
        capacity = grouped_mm.token_capacity(tokens, groups, multiple)
        splits = [[1] * min(groups, tokens) + [0] * (groups - min(groups, tokens))]
        for _ in range(50):
            cuts = torch.sort(torch.randint(0, tokens + 1, (groups - 1,), generator=g)).values.tolist()
            used = int(torch.randint(0, tokens + 1, (1,), generator=g))
            splits.append([b - a for a, b in zip([0, *cuts], [*cuts, tokens])][:groups])
            splits.append([min(c, used) for c in splits[-1]])
        for split in splits:
            assert sum(-(-c // multiple) * multiple for c in split) <= capacity, (split, capacity)
        assert capacity % 128 == 0


def test_invalid_sizes_refused_outside_the_deferred_check():
    x, w, _ = operands()
    with pytest.raises(ValueError, match="group sizes .* must be >= 0"):
        mxfp4_grouped_mm(x, w, torch.tensor([1000, 0, 0, 0, 0, 0]), LinearRecipe())
    with pytest.raises(ValueError, match="group sizes"):
        mxfp4_grouped_mm(x, w, torch.tensor([-1, 5, 0, 0, 0, 0]), LinearRecipe())


def test_invalid_sizes_counted_in_the_deferred_check_without_a_host_read():
    """Inside a training step's deferred check nothing is read back: the sizes count into the step's counter
    (the step then runs again synchronously and is refused there), and no index leaves its tensor."""
    x, w, gy = operands()
    with deferred.deferred_check("cpu") as counter:
        y = mxfp4_grouped_mm(x.clone().requires_grad_(True), w, torch.tensor([1000, 0, 0, 0, 0, 0]), LinearRecipe())
        y.backward(gy)
        assert counter.item() > 0
        with pytest.raises(deferred.DeficientBlocksInStep):
            deferred.raise_if_deficient()
    with deferred.deferred_check("cpu") as counter:
        mxfp4_grouped_mm(x, w, torch.tensor(COUNTS), LinearRecipe())
        assert counter.item() == 0


@pytest.mark.parametrize("mode, keeps_x", [("hadamard", False), ("full_precision", True)])
def test_backward_keeps_x_packed_in_the_token_layout(mode, keeps_x):
    x, w, gy = operands()
    from test_grouped import saved_for_backward

    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y, saved = saved_for_backward(
        lambda: mxfp4_grouped_mm(xr, wr, torch.tensor(COUNTS), LinearRecipe(mode, mode, mode))
    )
    assert any(t is xr for t in saved) == keeps_x
    packed = sum(t.numel() for t in saved if t.dtype == torch.uint8)
    capacity = grouped_mm.token_capacity(x.shape[0], len(COUNTS), 32)
    assert packed == (0 if keeps_x else IN * capacity // 2 + IN * capacity // 32)
    y.backward(gy)


def test_other_dtypes_random_signs_and_per_group_extraction_stay_on_the_loop():
    bf16 = torch.bfloat16
    one_call = grouped_mm.in_one_call
    assert all(one_call(LinearRecipe(), slot, bf16, bf16) for slot in SLOTS)
    assert not any(one_call(LinearRecipe(), slot, torch.float32, torch.float32) for slot in SLOTS)
    assert not any(one_call(LinearRecipe(randomized_hadamard=True), slot, bf16, bf16) for slot in SLOTS)
    for oe in ("inner_outlier_extract_left", "inner_outlier_extract_right"):
        assert not one_call(LinearRecipe(forward_y=oe), "forward_y", bf16, bf16)
    assert one_call(LinearRecipe(backward_gx="inner_outlier_extract_left"), "backward_gx", bf16, bf16)
    assert not one_call(LinearRecipe(backward_gx="inner_outlier_extract_right"), "backward_gx", bf16, bf16)
    # OE-left's weight gradient runs hadamard; OE-right's extracts per group in one call
    assert one_call(LinearRecipe(backward_gw="inner_outlier_extract_left"), "backward_gw", bf16, bf16)
    assert one_call(LinearRecipe(backward_gw="inner_outlier_extract_right"), "backward_gw", bf16, bf16)


@pytest.mark.parametrize(
    "modes, in_one_call",
    [
        # the slot mixes a calibrated MoE plan gives its expert stacks
        (
            ("hadamard", "inner_outlier_extract_left", "full_precision"),
            {"forward_y", "input_gradient", "weight_gradient"},
        ),
        (("hadamard", "inner_outlier_extract_right", "none"), {"forward_y", "saved_x", "weight_gradient"}),
        (
            ("inner_outlier_extract_left", "hadamard", "inner_outlier_extract_right"),
            {"saved_x", "input_gradient", "weight_gradient"},
        ),
        (("full_precision", "inner_outlier_extract_right", "hadamard"), {"forward_y", "saved_x", "weight_gradient"}),
    ],
)
def test_slots_choose_one_call_or_the_loop_each(modes, in_one_call, one_call_spy, monkeypatch):
    """Each slot runs in one call where its mode allows and loops over the groups otherwise; together they give
    the per-group loop's results."""
    x, w, gy = operands()
    recipe = LinearRecipe(*modes, outlier_k=4)
    got = run(x, w, gy, COUNTS, recipe)
    assert {part for part, n in one_call_spy.items() if n} == in_one_call
    want = run(x, w, gy, COUNTS, recipe, per_group=True, monkeypatch=monkeypatch)
    for slot, a, b in zip(SLOTS, got, want):
        assert_same_product(a, b, recipe.mode(slot) != "full_precision", slot)


@pytest.mark.parametrize("outlier_k", [4, 16])
def test_oe_right_weight_gradient_in_one_call(outlier_k, one_call_spy, monkeypatch):
    """OE-right of the weight gradient: each group's input channels of largest norm over its tokens come out of
    the quantization and into a BF16 GEMM, in one call; the loop picks the same channels (random data: no
    near-ties of the norms) and gives the same weight gradient."""
    x, w, gy = operands()
    x[:, 11] *= 40  # a second outlier channel, so some group has two
    recipe = LinearRecipe("hadamard", "hadamard", "inner_outlier_extract_right", outlier_k=outlier_k)
    got = run(x, w, gy, COUNTS, recipe)
    assert one_call_spy["saved_x"] == 1 and one_call_spy["weight_gradient"] == 1
    want = run(x, w, gy, COUNTS, recipe, per_group=True, monkeypatch=monkeypatch)
    for slot, a, b in zip(SLOTS, got, want):
        assert_same_product(a, b, slot != "backward_gw", slot)
    # the BF16 part is added after the rounding, as the loop adds it: the same up to its accumulation order
    gw, gw_loop = got[2], want[2]
    assert torch.all((gw.float() - gw_loop.float()).abs() <= gw_loop.float().abs() * 2.0**-7)


def test_top_channels_match_the_linear_choice_per_group():
    """The segmented norms pick, per group, the channels adahop.outliers.top_rows picks from the group's x^T,
    NaN / inf channels first."""
    from adahop.outliers import top_rows

    x, _, _ = operands()
    x[40, 9] = float("nan")
    x[3, 20] = float("inf")
    sizes = torch.tensor(COUNTS)
    dest, ends, capacity = grouped_mm.token_layout(sizes, x.shape[0], 32)
    layout = grouped_mm.to_layout(x, dest, capacity)
    group = grouped_mm.group_of_rows(ends, capacity)
    got = grouped_mm.top_channels(layout, group, len(COUNTS), 6)
    start = 0
    for e, n in enumerate(COUNTS):
        if n:
            want = top_rows(x[start : start + n].t(), 6)
            assert set(got[e].tolist()) == set(want.tolist()), e
        start += n


@pytest.mark.parametrize("outlier_k", [4, 16, 64])
def test_oe_left_input_gradient_in_one_call(outlier_k, one_call_spy, monkeypatch):
    """OE-left of the input gradient: each group's rows of gy of largest norm go to a BF16 GEMM, in one call
    (groups shorter than k give all their rows); the loop picks the same rows (no ties in random data) and gives
    the same input gradient, its BF16 part up to accumulation order."""
    x, w, gy = operands()
    gy[3] *= 50  # an outlier row in the first group
    recipe = LinearRecipe("hadamard", "inner_outlier_extract_left", "hadamard", outlier_k=outlier_k)
    got = run(x, w, gy, COUNTS, recipe)
    assert one_call_spy["input_gradient"] == 1
    want = run(x, w, gy, COUNTS, recipe, per_group=True, monkeypatch=monkeypatch)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    gx, gx_loop = got[1].float(), want[1].float()
    assert torch.all((gx - gx_loop).abs() <= gx_loop.abs() * 2.0**-7)
    assert (gx != gx_loop).float().mean() < 0.02


def test_top_rows_per_group_match_the_linear_choice():
    """Per group, the rows adahop.outliers.top_rows picks from the group's rows (NaN / inf rows first); slots
    past a short group's rows hold T."""
    from adahop.outliers import top_rows

    x, _, _ = operands()
    x[40, 9] = float("nan")
    x[3, 20] = float("inf")
    got = grouped_mm.top_rows_per_group(x, torch.tensor(COUNTS), 6)
    start = 0
    for e, n in enumerate(COUNTS):
        picked = [r for r in got[e].tolist() if r != x.shape[0]]
        want = (top_rows(x[start : start + n], 6) + start).tolist() if n else []
        assert sorted(picked) == sorted(want), e
        start += n


def test_invalid_sizes_in_the_deferred_check_never_index_past_x():
    """Counted, and clamped for the kernels: on a GPU an offset past x trips torch._grouped_mm's device-side
    check, which would end the process before the step could run again. The clamped sizes keep every offset
    inside x (a wrapped-around sum of huge sizes is counted too)."""
    for bad in ([30, 20, 15, 0, 0, 0], [-8, 20, 5, 0, 0, 0], [2**62] * 6):
        sizes = torch.tensor(bad)
        clamped = grouped_mm.in_range(sizes, 40)
        assert clamped.min() >= 0 and clamped.sum() <= 40
        with deferred.deferred_check("cpu") as counter:
            grouped_mm.check_sizes(sizes, 40)
            assert counter.item() == 1, bad
    valid = torch.tensor(COUNTS)
    assert torch.equal(grouped_mm.in_range(valid, sum(COUNTS) + 3), valid)


@pytest.mark.parametrize(
    "modes", [("hadamard",) * 3, ("none", "inner_outlier_extract_left", "inner_outlier_extract_right")]
)
def test_no_tokens_or_no_groups(modes):
    """An expert-parallel rank may receive no token; a stack may hold no expert: zeros, as the loop gives."""
    recipe = LinearRecipe(*modes, outlier_k=4)
    for tokens, groups in ((0, 1), (0, 3), (5, 0)):
        x = torch.randn(tokens, IN, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(groups, OUT, IN, dtype=torch.bfloat16, requires_grad=True)
        sizes = torch.tensor([0] * groups, dtype=torch.int64)
        y = mxfp4_grouped_mm(x, w, sizes, recipe)
        y.backward(torch.ones_like(y))
        assert y.shape == (tokens, OUT) and not y.any()
        assert not w.grad.any() and not x.grad.any()


def test_float_sizes_refused():
    x, w, _ = operands()
    with pytest.raises(ValueError, match="must be integers"):
        mxfp4_grouped_mm(x, w, torch.tensor([10.7, 10.2, 5.9, 0, 0, 0]), LinearRecipe())
