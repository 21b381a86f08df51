"""The custom ops with saved forms among their outputs (the linear, the grouped GEMM, MXFP4 attention) mark them
non-differentiable and tell autograd not to materialize their gradients: otherwise each backward would first get
a zero tensor as large as every saved form (an allocation and a fill apiece, on the GPU's critical path), and
the reference attention one as large as P [B, H, Tq, Tk]."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adahop.attention import mxfp4_attention
from adahop.grouped import mxfp4_grouped_mm
from adahop.linear import LinearRecipe, mxfp4_linear

ZERO_MAKERS = {"aten::zeros", "aten::zeros_like", "aten::new_zeros", "aten::zero_", "aten::fill_", "aten::full"}


class ZeroFills(TorchDispatchMode):
    """The sizes (numel) of the tensors made or filled with a constant while active."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name in ZERO_MAKERS and isinstance(out, torch.Tensor):
            self.sizes.append(out.numel())
        return out


def backward_fills(loss):
    with ZeroFills() as fills:
        loss.backward()
    return fills.sizes


@pytest.mark.parametrize(
    "mode", ["hadamard", "inner_outlier_extract_left", "inner_outlier_extract_right", "full_precision"]
)
def test_linear_backward_gets_no_zero_gradients_for_its_saved_forms(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g, requires_grad=True)
    w = torch.randn(128, 96, generator=g, requires_grad=True)
    y = mxfp4_linear(x, w, forward_y=mode, backward_gx=mode, backward_gw=mode)
    assert backward_fills(y.sum()) == [], mode  # (on CPU the backward itself fills nothing)
    assert x.grad is not None and w.grad is not None


def test_grouped_backward_gets_no_zero_gradients_for_its_saved_forms():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 64, generator=g, requires_grad=True)
    w = torch.randn(3, 32, 64, generator=g, requires_grad=True)
    y = mxfp4_grouped_mm(x, w, torch.tensor([32, 0, 64]), LinearRecipe("hadamard", "hadamard", "hadamard"))
    assert backward_fills(y.sum()) == []
    assert x.grad is not None and w.grad is not None


def test_attention_backward_gets_no_zero_gradient_for_p():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 64, 32, generator=g, requires_grad=True) for _ in range(3))
    o = mxfp4_attention(q, k, v)
    assert backward_fills(o.sum()) == []
    assert q.grad is not None and k.grad is not None and v.grad is not None
