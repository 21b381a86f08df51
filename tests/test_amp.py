"""AdaHOP layers under torch.autocast compute like nn.Linear / SDPA there: inputs in the autocast dtype,
outputs in it, the reference arithmetic unchanged inside (float64 definition in tests/reference.py)."""

import pytest
import reference as ref
import torch

from adahop.attention import mxfp4_attention
from adahop.linear import AdaHOPLinear, mxfp4_linear


@pytest.mark.parametrize("mode", ["hadamard", "full_precision"])
def test_linear_under_autocast_takes_the_autocast_dtype(mode):
    torch.manual_seed(0)
    lin = AdaHOPLinear(64, 96, bias=False, forward_y=mode, backward_gx=mode, backward_gw=mode)
    x = torch.randn(40, 64, requires_grad=True)  # float32, as RMSNorm hands it over under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
        assert y.dtype == torch.bfloat16 == torch.nn.functional.linear(x, lin.weight).dtype
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32  # back through the casts
    # the same as the layer called outside autocast on the bf16-rounded inputs
    xb, wb = x.detach().to(torch.bfloat16), lin.weight.detach().to(torch.bfloat16)
    want = ref.gemm(xb.double().numpy(), wb.double().numpy(), mode, k_out=lin.recipe.outlier_k)
    assert torch.allclose(y.double(), torch.from_numpy(want).to(torch.bfloat16).double(), rtol=1e-2, atol=1e-2)
    # bit for bit the layer's function called without autocast on the inputs autocast casts to
    plain = mxfp4_linear(xb, wb, forward_y=mode, backward_gx=mode, backward_gw=mode)
    assert plain.dtype == torch.bfloat16 and torch.equal(y.detach(), plain)


def test_attention_under_autocast_takes_the_autocast_dtype():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 32) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = mxfp4_attention(q, k, v)
    assert o.dtype == torch.bfloat16
    plain = mxfp4_attention(q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16))
    assert torch.equal(o, plain)


def test_bias_and_grouped_padding_follow_autocast():
    from adahop.grouped import mxfp4_grouped_mm
    from adahop.linear import LinearRecipe

    lin = AdaHOPLinear(64, 32, bias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(torch.randn(8, 64)).dtype == torch.bfloat16  # a float32 bias does not promote it back
        out = mxfp4_grouped_mm(torch.randn(40, 64), torch.randn(2, 32, 64), [16, 16], LinearRecipe())
    assert out.dtype == torch.bfloat16 and out[32:].abs().sum() == 0  # the 8 padding rows
