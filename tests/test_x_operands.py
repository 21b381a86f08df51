"""adahop.x_operands: x's two quantized forms as ops of their own (the reference path, on CPU), checked
against the independent float64 reference of tests/reference.py and against the forms the linear's own op
makes (adahop.linear), on fresh and on adversarial inputs."""

import numpy as np
import pytest
import reference as ref
import torch

from adahop import x_operands
from adahop.linear import LinearRecipe, _x_for_gw
from adahop.mx.quantize import dequantize_mxfp4


def _x(rows=80, k=64, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(rows, k)
    x[:, 5] *= 300  # a channel outlier
    if rows > 13:
        x[7] = 0.0  # a zero token
        x[11, :32] = torch.tensor([0.25, -0.75] * 16)  # ties of the E2M1 grid at scale 1
        x[13, 32:] *= 2.0**-120  # tiny exponents
    return x


def _signed(x: np.ndarray, seed: int, k: int) -> np.ndarray | None:
    s = x_operands.signs(k, seed, torch.device("cpu"))
    return None if s is None else s.numpy().astype(np.float64)


@pytest.mark.parametrize("hsize", [0, 32, 64])
@pytest.mark.parametrize("seed", [-1, 12345])
def test_left_operand_is_the_mxfp4_of_the_transformed_x(hsize, seed):
    x = _x()
    values, b, c = x_operands.quantize_left_operand(x, hsize, seed, False)
    assert values.dtype == torch.float32 and b.numel() == 0 and c.numel() == 0
    t = x.double().numpy()
    if hsize:
        t = ref.block_hadamard(t, hsize, signs=_signed(t, seed, 64))
    want = ref.fake_quant(t)
    np.testing.assert_array_equal(values.double().numpy(), want)


@pytest.mark.parametrize("hsize", [0, 32])
@pytest.mark.parametrize("rows", [80, 96, 1])
def test_saved_operand_is_x_transposed_padded_and_quantized_along_tokens(hsize, rows):
    x = _x(rows=rows)
    packed, scales = x_operands.quantize_saved_operand(x, 32, hsize, -1)
    padded = -(-rows // 32) * 32
    assert packed.shape == (64, padded // 2) and scales.shape == (64, padded // 32)
    t = np.zeros((padded, 64))
    t[:rows] = x.double().numpy()
    t = t.T  # K-major: the tokens are the GEMM's inner dimension
    if hsize:
        t = ref.block_hadamard(t, hsize)
    got = dequantize_mxfp4(packed, scales, axis=-1, dtype=torch.float64).numpy()
    np.testing.assert_array_equal(got, ref.fake_quant(t))


def test_nonfinite_blocks_are_nan_in_both_forms():
    x = _x()
    x[3, 40] = float("inf")
    x[50, 2] = float("nan")
    values = x_operands.quantize_left_operand(x, 32, -1, False)[0]
    assert values[3, 32:].isnan().all() and values[50, :32].isnan().all() and not values[4].isnan().any()
    packed, scales = x_operands.quantize_saved_operand(x, 32, 32, -1)
    saved = dequantize_mxfp4(packed, scales, axis=-1, dtype=torch.float32)
    assert saved[40, :32].isnan().all() and saved[2, 32:64].isnan().all() and not saved[41].isnan().any()


@pytest.mark.parametrize("randomized", [False, True])
def test_the_ops_give_the_forms_the_linear_op_makes_itself(randomized):
    """What _shared_x_forms hands the linear's op is what the op would make without it (same bits)."""
    r = LinearRecipe(randomized_hadamard=randomized, hadamard_seed=9)
    x = _x(rows=70)
    own = _x_for_gw(x, r).packed
    packed, scales = x_operands.quantize_saved_operand(x, 32, 32, r.signs_seed("backward_gw"))
    assert torch.equal(packed, own.data) and torch.equal(scales, own.scales)
    from adahop.linear import quantize_left

    own_left = quantize_left(x, 1, r, "forward_y", "nearest").values
    assert torch.equal(x_operands.quantize_left_operand(x, 32, r.signs_seed("forward_y"), False)[0], own_left)


def test_ops_pass_opcheck():
    x = _x()
    torch.library.opcheck(x_operands.quantize_left_operand, (x, 32, -1, False))
    torch.library.opcheck(x_operands.quantize_saved_operand, (x[:70], 32, 32, 5))


@pytest.mark.parametrize(
    "modes, given, says",
    [
        (("inner_outlier_extract_left", "hadamard", "hadamard"), "left", "x_left given for forward_y"),
        (("full_precision", "hadamard", "hadamard"), "left", "x_left given for forward_y"),
        (("hadamard", "hadamard", "full_precision"), "saved", "x_saved given"),
        (("hadamard", "hadamard", "inner_outlier_extract_right"), "saved", "x_saved given"),
    ],
)
def test_the_linear_op_refuses_forms_its_modes_do_not_use(modes, given, says):
    from adahop.linear import linear_forward

    r = LinearRecipe(*modes)
    x, w = _x(), torch.randn(96, 64)
    left = list(x_operands.quantize_left_operand(x, 32, -1, False)) if given == "left" else []
    saved = list(x_operands.quantize_saved_operand(x, 32, 32, -1)) if given == "saved" else []
    with pytest.raises(ValueError, match=says):
        linear_forward(x, w, r.key, True, True, left, saved)
    if given == "saved":  # nor when nothing is kept for the weight gradient
        with pytest.raises(ValueError, match=says):
            linear_forward(x, w, LinearRecipe().key, True, False, [], saved)
