"""MXFP4 attention (enable_mxfp4_fa): Q K^T and P V, forward and backward, in MXFP4.

Two implementations of the same semantics: the torch reference below (`attention_forward` /
`attention_backward`, which materializes the [Tq, Tk] probabilities: CPU, tests, other devices), and on CUDA the
flash-style Triton kernels of adahop.kernels.attention (`flash_attention_forward` / `flash_attention_backward`,
memory O(T)), whose quantized operands are the reference's bit for bit. For finite inputs their outputs agree up
to summation order; a NaN or infinite input spreads differently: the kernels skip masked positions where the
reference multiplies them by zero (adahop.kernels.attention says how far it reaches). Every GEMM quantizes both
operands along its inner dimension K:

| GEMM | K | transform |
| --- | --- | --- |
| S = Q K^T * scale | head_dim | Hadamard along head_dim on both ((Q H)(K H)^T = Q K^T) |
| O = (E V) / rowsum(E) (E = exp(S) / 2^M, both quantized) | keys | none (V along keys) |
| dP = dO V^T | head_dim | Hadamard along head_dim on both |
| dV = P^T dO | queries | none |
| dQ = dS K * scale | keys | none |
| dK = dS^T Q * scale | queries | none |

The probabilities are quantized before normalization: E = 2^(S log2(e) - M), with M = ceil(max S log2(e)) per row
(E's largest entry in (1/2, 1]), and O = q(E) q(V) / L, where L = rowsum(q(E)) sums the quantized values, so the
weights that multiply V sum to one (a row with one dominant key gives that key's V exactly, though q may round
its weight). MXFP4 quantization commutes with a power of two (the block scale takes it), so O does not depend on
M: any integer stabilizer gives the same bits, within the range of E8M0 scales and float32 (E entries below
2^-126 of the row's largest are where a shift of M can change bits). That is what lets the flash kernel run one
pass over the keys, rescaling its sums by 2^(M_old - M_new) as the running max grows, exactly within that range
(a jump of the running max by more than 126 binades drops the earlier keys, whose weights are then below
2^-126 of the new largest).
The backward is the gradient of that O with q as a straight-through estimator: with P = E / L,
dS = P * (dP - rowsum(dO * O)), the last term being the gradient through L; it runs in float32 on the unquantized
P. With `use_sr_grad`, the gradient operands (dO, dS) use stochastic rounding. Sequence lengths and head_dim
must be multiples of 32.

`[quantize.linear.mx.kernels] reference_only` runs the reference on CUDA too.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .amp import autocast_inputs
from .backend import kernel_device
from .hadamard import block_hadamard, check_hadamard_size
from .mx import BLOCK_SIZE, fake_quantize_mxfp4

LOG2E = math.log2(math.e)  # scores are taken to base 2: S log2(e), so that E = 2^(S log2(e) - M)


def output_dot(do: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """rowsum(dO * O) in float32, [B, H, T]: the softmax backward's gradient through the row sums (the flash
    kernel computes the same sum tile by tile)."""
    return (do.to(torch.float32) * o.to(torch.float32)).sum(dim=-1)


def _q(t: torch.Tensor, axis: int, rounding: str = "nearest", hadamard: int | None = None) -> torch.Tensor:
    if hadamard is not None:
        t = block_hadamard(t, axis=axis, block=hadamard)
    return fake_quantize_mxfp4(t.to(torch.float32), axis=axis, rounding=rounding)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hadamard_size: int) -> None:
    check_hadamard_size(hadamard_size)
    if any(not t.is_floating_point() for t in (q, k, v)):
        raise TypeError(f"MXFP4 attention takes float tensors, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q [B, H, Tq, D] and k = v [B, H, Tk, D], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    for name, n in (("query length", q.shape[2]), ("key length", k.shape[2]), ("head_dim", q.shape[3])):
        if n % BLOCK_SIZE or n == 0:
            raise ValueError(f"MXFP4 attention needs the {name} to be a positive multiple of {BLOCK_SIZE}, got {n}")
    if q.shape[3] % hadamard_size:
        raise ValueError(f"head_dim {q.shape[3]} is not a multiple of hadamard_size {hadamard_size}")


def _check_saved(q: torch.Tensor, do: torch.Tensor, o: torch.Tensor, kept: torch.Tensor, name: str, shape) -> None:
    """The backward ops' own inputs against q's shape (they may be called directly: a broadcasting o or P would
    give wrong gradients without an error)."""
    if do.shape != q.shape or o.shape != q.shape or kept.shape != shape:
        raise ValueError(
            f"expected do and o like q {tuple(q.shape)} and the forward's {name} {tuple(shape)}, got "
            f"{tuple(do.shape)}, {tuple(o.shape)} and {tuple(kept.shape)}"
        )


# Forward and backward as two torch custom ops, like the AdaHOP linear's (adahop/linear.py): torch.compile
# traces a model with MXFP4 attention whole (fullgraph) and runs this same code inside them, so compiled and
# eager give the same bits, stochastic rounding included (a traced torch.rand would be the compiler's own
# draws under inductor). Backward keeps q, k, v (inputs, no copy) and the float32 probabilities P
# [B, H, Tq, Tk]: the reference materializes P anyway, and recomputing it would add a GEMM.
@torch.library.custom_op("adahop::attention_forward", mutates_args=())
def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    is_causal: bool,
    hadamard_size: int,
    use_sr_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O in q's dtype, P in float32) of q [B, H, Tq, D], k = v [B, H, Tk, D] (`use_sr_grad` is backward's)."""
    _check(q, k, v, hadamard_size)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"the reference takes as many key/value heads as query heads, got {q.shape[1]}, {k.shape[1]}")
    t = _q(q, -1, hadamard=hadamard_size) @ _q(k, -1, hadamard=hadamard_size).transpose(-1, -2) * (scale * LOG2E)
    if is_causal:
        tq, tk = q.shape[2], k.shape[2]
        # top-left aligned like F.scaled_dot_product_attention(is_causal=True): query i sees keys 0..i
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()
        t = t.masked_fill(~mask, float("-inf"))
    e = torch.exp2(t - t.amax(dim=-1, keepdim=True).ceil())  # the power-of-two stabilizer (module docstring)
    eq = _q(e, -1)
    total = eq.sum(dim=-1, keepdim=True)
    o = (eq @ _q(v, -2)) / total
    return o.to(q.dtype), e / total


@attention_forward.register_fake
def _(q, k, v, scale, is_causal, hadamard_size, use_sr_grad):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty((*q.shape[:-1], k.shape[2]), dtype=torch.float32)


@torch.library.custom_op("adahop::attention_backward", mutates_args=())
def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    p: torch.Tensor,
    scale: float,
    hadamard_size: int,
    use_sr_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the output gradient and what attention_forward kept."""
    _check(q, k, v, hadamard_size)
    _check_saved(q, do, o, p, "probabilities", (*q.shape[:-1], k.shape[2]))
    sr = "stochastic" if use_sr_grad else "nearest"
    # float32 GEMMs even where backward is called under autocast (eager backward would inherit it, a compiled
    # one does not): the same bits either way
    with torch.autocast(do.device.type, enabled=False):
        do = do.to(torch.float32)
        dv = _q(p, -2).transpose(-1, -2) @ _q(do, -2, sr)
        dp = _q(do, -1, sr, hadamard=hadamard_size) @ _q(v, -1, hadamard=hadamard_size).transpose(-1, -2)
        ds = p * (dp - output_dot(do, o).unsqueeze(-1))
        dq = _q(ds, -1, sr) @ _q(k, -2) * scale
        dk = _q(ds, -2, sr).transpose(-1, -2) @ _q(q, -2) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@attention_backward.register_fake
def _(do, q, k, v, o, p, scale, hadamard_size, use_sr_grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the GEMMs give them


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale, is_causal, hadamard_size, use_sr_grad = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.hadamard_size, ctx.use_sr_grad = scale, hadamard_size, use_sr_grad


def _backward(ctx, do, unused):
    q, k, v, o, p = ctx.saved_tensors
    dq, dk, dv = attention_backward(do, q, k, v, o, p, ctx.scale, ctx.hadamard_size, ctx.use_sr_grad)
    return dq, dk, dv, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


# The flash path: the same table, computed by adahop.kernels.attention without the [Tq, Tk] matrix. k and v keep
# their key/value heads (GQA is indexed in the kernels, not repeated). Backward keeps q, k, v, O and the
# forward's row stabilizer M and sum L (P = 2^(S log2(e) - M) / L, the reference's formula, gives backward the
# forward's P), and quantizes its operands again (cheap next to the attention GEMMs; keeping them would hold
# three more copies of q, k, v).
@torch.library.custom_op("adahop::flash_attention_forward", mutates_args=())
def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    is_causal: bool,
    hadamard_size: int,
    use_sr_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O in q's dtype, each row's stabilizer M and sum L, float32 [B, Hq, Tq, 2]) of q [B, Hq, Tq, D],
    k = v [B, Hkv, Tk, D]."""
    from .kernels import attention as flash

    _check(q, k, v, hadamard_size)  # the op may be called directly: no kernel reads past a shorter operand
    qh = flash.operand(q, hadamard_size=hadamard_size)
    kh = flash.operand(k, hadamard_size=hadamard_size)
    return flash.forward(qh, kh, flash.operand(v, along_sequence=True), scale, is_causal, q.dtype)


@flash_attention_forward.register_fake
def _(q, k, v, scale, is_causal, hadamard_size, use_sr_grad):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty((*q.shape[:-1], 2), dtype=torch.float32)


@torch.library.custom_op("adahop::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    stats: torch.Tensor,
    scale: float,
    is_causal: bool,
    hadamard_size: int,
    use_sr_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the output gradient and what flash_attention_forward kept."""
    from .kernels import attention as flash

    _check(q, k, v, hadamard_size)
    _check_saved(q, do, o, stats, "stats", (*q.shape[:-1], 2))
    if stats.dtype != torch.float32:
        raise TypeError(f"the forward's stats are float32, got {stats.dtype}")
    stats = stats.contiguous()
    h = hadamard_size
    (qh, qq), (kh, kq) = flash.operands(q, hadamard_size=h), flash.operands(k, hadamard_size=h)
    doh, doq = flash.operands(do, hadamard_size=h, stochastic=use_sr_grad)
    dq, dk, dv = flash.backward(
        qh,
        kh,
        flash.operand(v, hadamard_size=h),
        doh,
        qq,
        kq,
        doq,
        do.contiguous(),
        o.contiguous(),
        stats,
        scale,
        is_causal,
        use_sr_grad,
        (q.dtype, k.dtype, v.dtype),
    )
    return dq, dk, dv


@flash_attention_backward.register_fake
def _(do, q, k, v, o, stats, scale, is_causal, hadamard_size, use_sr_grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _flash_setup_context(ctx, inputs, output) -> None:
    q, k, v, scale, is_causal, hadamard_size, use_sr_grad = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = scale, is_causal, hadamard_size, use_sr_grad


def _flash_backward(ctx, do, unused):
    q, k, v, o, stats = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(do.contiguous(), q, k, v, o, stats, *ctx.args)
    return dq, dk, dv, None, None, None, None


flash_attention_forward.register_autograd(_flash_backward, setup_context=_flash_setup_context)


def flash_device(device: torch.device) -> bool:
    """Whether attention on `device` runs the flash kernels: CUDA with bf16 tensor cores (sm_80 and later), unless
    the reference is forced."""
    return kernel_device(device, (8, 0))


def mxfp4_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    is_causal: bool = True,
    enable_gqa: bool = False,
    hadamard_size: int = 32,
    use_sr_grad: bool = False,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V with every GEMM in MXFP4; q [B, Hq, Tq, D], k, v [B, Hkv, Tk, D]."""
    _check(q, k, v, hadamard_size)
    if q.shape[1] != k.shape[1] and (not enable_gqa or k.shape[1] == 0 or q.shape[1] % k.shape[1]):
        raise ValueError(f"{q.shape[1]} query heads and {k.shape[1]} key/value heads need enable_gqa and a divisor")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    (q, k, v), amp_off = autocast_inputs(q, k, v)  # the dtype SDPA would compute in
    with amp_off:
        if flash_device(q.device):
            return flash_attention_forward(q, k, v, float(scale), is_causal, hadamard_size, use_sr_grad)[0]
        if q.shape[1] != k.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return attention_forward(q, k, v, float(scale), is_causal, hadamard_size, use_sr_grad)[0]


class MXFP4Attention(nn.Module):
    """Drop-in for torchtitan's ScaledDotProductAttentionWrapper (same call signature)."""

    def __init__(self, hadamard_size: int = 32, use_sr_grad: bool = False):
        super().__init__()
        self.hadamard_size = check_hadamard_size(hadamard_size)
        self.use_sr_grad = use_sr_grad

    def forward(self, q, k, v, *, scale: float | None = None, enable_gqa: bool = False, is_causal: bool = True):
        return mxfp4_attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=is_causal,
            enable_gqa=enable_gqa,
            hadamard_size=self.hadamard_size,
            use_sr_grad=self.use_sr_grad,
        )

    def extra_repr(self) -> str:
        return f"hadamard_size={self.hadamard_size}, use_sr_grad={self.use_sr_grad}"
