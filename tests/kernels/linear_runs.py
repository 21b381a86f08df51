"""One forward+backward of the AdaHOP linear for the tests that compare two settings of a switch bit for bit."""

import torch

from adahop.linear import mxfp4_linear


def linear_grads(x, w, gy, seed, **kw):
    """(y, gx, gw) of mxfp4_linear(x, w, **kw) with output gradient gy, from fresh leaves; `seed` seeds torch
    first, so both runs of a comparison draw the same stochastic-rounding seeds."""
    torch.manual_seed(seed)
    xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = mxfp4_linear(xx, ww, **kw)
    y.backward(gy)
    return y, xx.grad, ww.grad
