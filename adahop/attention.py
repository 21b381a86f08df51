"""MXFP4 attention (enable_mxfp4_fa): Q K^T and P V, forward and backward, in MXFP4.

Two implementations of the same semantics: the torch reference below (`attention_forward` /
`attention_backward`, which materializes the [Tq, Tk] probabilities: CPU, tests, other devices), and on CUDA the
flash-style Triton kernels of adahop.kernels.attention (`flash_attention_forward` / `flash_attention_backward`,
memory O(T)), whose quantized operands are the reference's bit for bit. For finite inputs their outputs agree up
to summation order; a NaN or infinite input spreads differently: the kernels skip masked positions where the
reference multiplies them by zero (adahop.kernels.attention says how far it reaches). Each GEMM quantizes both
operands along its inner dimension K (dP only where `quantize_dp`):

| GEMM | K | transform |
| --- | --- | --- |
| S = Q K^T * scale | head_dim | Hadamard along head_dim on both ((Q H)(K H)^T = Q K^T) |
| O = (E V) / rowsum(E) (E = exp(S) / 2^M, both quantized) | keys | none (V along keys) |
| dP = dO V^T | head_dim | bf16 by default; MXFP4 with the Hadamard along head_dim on both where `quantize_dp` |
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
P. With `use_sr_grad`, the quantized gradient operands (dO where quantized, dS) use stochastic rounding.
Sequence lengths and head_dim must be multiples of 32.

Two settings of [quantize.linear.mx.attention] cut that gradient's error, and both are on by default
(smooth_keys = true, quantize_dp = false; the custom ops themselves take quantize_dp = True unless told, for
direct callers). A 100M Llama with every GEMM above in MXFP4, dP included, and the keys as they come diverged
after about 300 steps (docs/quality.md). The softmax gradient dS is small and sums to zero over each row's keys,
which quantizing dP and dS breaks; the error then reaches dQ = dS K along the keys' common direction
(`scripts/attention_gradient_study.py` measures it against exact attention).
- `smooth_keys`: K minus each head's mean key over the sequence, before everything (softmax is unchanged: q . kbar
  shifts a whole row). The scores are quantized without the keys' shared offset, and dQ = dS (K - kbar) drops
  the part of dS that does not sum to zero. The mean covers every position of the sequence, later ones too: the
  outputs depend on later tokens through rounding only.
- dP = dO V^T from dO and V in bf16 (`quantize_dp = false`): dS = P (dP - rowsum(dO * O)) differences two
  nearly equal terms, to which MXFP4 dP adds its error.

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

# the defaults of [quantize.linear.mx.attention] (adahop.config.Attention), which training passes explicitly
SMOOTH_KEYS = True
QUANTIZE_DP = False
LOG2E = math.log2(math.e)  # scores are taken to base 2: S log2(e), so that E = 2^(S log2(e) - M)


def output_dot(do: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """rowsum(dO * O) in float32, [B, H, T]: the softmax backward's gradient through the row sums (the flash
    kernel computes the same sum tile by tile)."""
    return (do.to(torch.float32) * o.to(torch.float32)).sum(dim=-1)


def _q(t: torch.Tensor, axis: int, rounding: str = "nearest", hadamard: int | None = None) -> torch.Tensor:
    if hadamard is not None:
        t = block_hadamard(t, axis=axis, block=hadamard)
    return fake_quantize_mxfp4(t.to(torch.float32), axis=axis, rounding=rounding)


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """t's values rounded to bf16, in float32: dP's operands where it is not quantized (the GPU's tensor cores
    take them as bf16; a float32 model's dO and V are rounded to it on both paths alike)."""
    return t.to(torch.bfloat16).to(torch.float32)


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


def _check_flags(**flags) -> None:
    """The settings are bools: `bool("false")` is True, so nothing else is taken."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"MXFP4 attention's {name} is True or False, got {value!r}")


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
    quantize_dp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O in q's dtype, P in float32) of q [B, H, Tq, D], k = v [B, H, Tk, D] (`use_sr_grad` and `quantize_dp`
    are backward's)."""
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
def _(q, k, v, scale, is_causal, hadamard_size, use_sr_grad, quantize_dp=True):
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
    quantize_dp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the output gradient and what attention_forward kept; dP = dO V^T in MXFP4 (after the
    Hadamard) where `quantize_dp`, else from dO and V rounded to bf16."""
    _check(q, k, v, hadamard_size)
    _check_saved(q, do, o, p, "probabilities", (*q.shape[:-1], k.shape[2]))
    sr = "stochastic" if use_sr_grad else "nearest"
    # float32 GEMMs even where backward is called under autocast (eager backward would inherit it, a compiled
    # one does not): the same bits either way
    with torch.autocast(do.device.type, enabled=False):
        do = do.to(torch.float32)
        dv = _q(p, -2).transpose(-1, -2) @ _q(do, -2, sr)
        if quantize_dp:
            dp = _q(do, -1, sr, hadamard=hadamard_size) @ _q(v, -1, hadamard=hadamard_size).transpose(-1, -2)
        else:
            dp = _bf16(do) @ _bf16(v).transpose(-1, -2)
        ds = p * (dp - output_dot(do, o).unsqueeze(-1))
        dq = _q(ds, -1, sr) @ _q(k, -2) * scale
        dk = _q(ds, -2, sr).transpose(-1, -2) @ _q(q, -2) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@attention_backward.register_fake
def _(do, q, k, v, o, p, scale, hadamard_size, use_sr_grad, quantize_dp=True):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the GEMMs give them


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale, is_causal, *args = inputs  # args: hadamard_size, use_sr_grad, quantize_dp
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # P gets no gradient: no [Tq, Tk] zero tensor for it
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.args = scale, args


def _backward(ctx, do, unused):
    q, k, v, o, p = ctx.saved_tensors
    dq, dk, dv = attention_backward(do, q, k, v, o, p, ctx.scale, *ctx.args)
    return dq, dk, dv, *[None] * (2 + len(ctx.args))


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
    quantize_dp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O in q's dtype, each row's stabilizer M and sum L, float32 [B, Hq, Tq, 2]) of q [B, Hq, Tq, D],
    k = v [B, Hkv, Tk, D]."""
    from .kernels import attention as flash

    _check(q, k, v, hadamard_size)  # the op may be called directly: no kernel reads past a shorter operand
    qh = flash.operand(q, hadamard_size=hadamard_size)
    kh = flash.operand(k, hadamard_size=hadamard_size)
    return flash.forward(qh, kh, flash.operand(v, along_sequence=True), scale, is_causal, q.dtype)


@flash_attention_forward.register_fake
def _(q, k, v, scale, is_causal, hadamard_size, use_sr_grad, quantize_dp=True):
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
    quantize_dp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the output gradient and what flash_attention_forward kept (`quantize_dp` as in
    attention_backward)."""
    from .kernels import attention as flash

    _check(q, k, v, hadamard_size)
    _check_saved(q, do, o, stats, "stats", (*q.shape[:-1], 2))
    if stats.dtype != torch.float32:
        raise TypeError(f"the forward's stats are float32, got {stats.dtype}")
    stats = stats.contiguous()
    h = hadamard_size
    (qh, qq), (kh, kq) = flash.operands(q, hadamard_size=h), flash.operands(k, hadamard_size=h)
    if quantize_dp:
        doh, doq = flash.operands(do, hadamard_size=h, stochastic=use_sr_grad)
        vh = flash.operand(v, hadamard_size=h)
    else:  # dP's operands with the values _bf16 gives them, contiguous in the kernels' operand dtype
        doh, vh = (t.to(torch.bfloat16).to(flash.OPERAND_DTYPE).contiguous() for t in (do, v))
        doq = flash.operand(do, along_sequence=True, stochastic=use_sr_grad)
    dq, dk, dv = flash.backward(
        qh,
        kh,
        vh,
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
def _(do, q, k, v, o, stats, scale, is_causal, hadamard_size, use_sr_grad, quantize_dp=True):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _flash_setup_context(ctx, inputs, output) -> None:
    q, k, v, *args = inputs  # args: scale, is_causal, hadamard_size, use_sr_grad, quantize_dp
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # the row statistics get no gradient: no zero tensor for them
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = args


def _flash_backward(ctx, do, unused):
    q, k, v, o, stats = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(do.contiguous(), q, k, v, o, stats, *ctx.args)
    return dq, dk, dv, *[None] * len(ctx.args)


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
    smooth_keys: bool = SMOOTH_KEYS,
    quantize_dp: bool = QUANTIZE_DP,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V with its GEMMs in MXFP4 (dP = dO V^T too where `quantize_dp`); q [B, Hq, Tq, D],
    k, v [B, Hkv, Tk, D]. `smooth_keys` subtracts each head's mean key over the sequence first (module
    docstring)."""
    _check(q, k, v, hadamard_size)
    _check_flags(use_sr_grad=use_sr_grad, smooth_keys=smooth_keys, quantize_dp=quantize_dp)
    if q.shape[1] != k.shape[1] and (not enable_gqa or k.shape[1] == 0 or q.shape[1] % k.shape[1]):
        raise ValueError(f"{q.shape[1]} query heads and {k.shape[1]} key/value heads need enable_gqa and a divisor")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    (q, k, v), amp_off = autocast_inputs(q, k, v)  # the dtype SDPA would compute in
    with amp_off:
        if smooth_keys:
            k = k - k.mean(dim=2, keepdim=True, dtype=torch.float32).to(k.dtype)
        args = (float(scale), is_causal, hadamard_size, use_sr_grad, quantize_dp)
        if flash_device(q.device):
            return flash_attention_forward(q, k, v, *args)[0]
        if q.shape[1] != k.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return attention_forward(q, k, v, *args)[0]


class MXFP4Attention(nn.Module):
    """Drop-in for torchtitan's ScaledDotProductAttentionWrapper (same call signature)."""

    def __init__(
        self,
        hadamard_size: int = 32,
        use_sr_grad: bool = False,
        smooth_keys: bool = SMOOTH_KEYS,
        quantize_dp: bool = QUANTIZE_DP,
    ):
        super().__init__()
        _check_flags(use_sr_grad=use_sr_grad, smooth_keys=smooth_keys, quantize_dp=quantize_dp)
        self.hadamard_size = check_hadamard_size(hadamard_size)
        self.use_sr_grad, self.smooth_keys, self.quantize_dp = use_sr_grad, smooth_keys, quantize_dp

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
            smooth_keys=self.smooth_keys,
            quantize_dp=self.quantize_dp,
        )

    def extra_repr(self) -> str:
        return (
            f"hadamard_size={self.hadamard_size}, use_sr_grad={self.use_sr_grad}, smooth_keys={self.smooth_keys}, "
            f"quantize_dp={self.quantize_dp}"
        )
