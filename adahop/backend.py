"""The one dispatch point between the torch reference and the GPU kernels.

Every GEMM operand is handled in "K-major" form: a 2-D tensor [rows, K] whose last axis is the GEMM's
inner dimension, so that C = A @ B is computed as matmul(A, Bt) with A [M, K] and Bt = B^T [N, K].
An operand stored the other way round (K along dim 0, e.g. x when it is the right operand of the
weight-gradient GEMM) is passed with `k_dim=0` and transposed here, where a kernel can fuse the
transpose into its single pass.

The reference path below is plain torch: it produces dequantized float32 operands and multiplies them
in float32. GPU kernels (adahop.kernels) must produce the same quantized operands bit for bit.

Fast path (CUDA, compute capability >= 9.0, K % 128 == 0, Hadamard block <= 128, unless
`[quantize.linear.mx.kernels] reference_only`): one fused Triton pass (adahop.kernels.quantize) writes the packed MXFP4
form and/or its exact fp8 e4m3 re-encoding with per-128 scales, and the GEMM runs on cuBLAS's
blockwise-scaled fp8 `torch._scaled_mm` (adahop.kernels.gemm), with an exact correction for the rare
blocks fp8 cannot hold. The left operand of a GEMM is quantized when `matmul` sees it (deferred), so
the right operand can take one scale per 128x128 tile (`[quantize.linear.mx.kernels] tile_b`, see
docs/kernels.md). Stochastic
rounding on the fast path draws its uniforms from Philox (seeded from torch's CPU generator or the
given one): same distribution as the reference, not the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .hadamard import block_hadamard
from .kernels.state import active
from .mx import MXFP4Tensor, quantize_blocks


def reference_forced() -> bool:
    """Whether every device runs the torch reference (the active FastPathState's force_reference:
    `[quantize.linear.mx.kernels] reference_only`, for debugging kernels)."""
    return active().force_reference


# GEMM slots whose right operand is the weight (W for y, W^T for the input gradient): its magnitudes vary
# little across 128 rows, so one fp8 scale per 128x128 tile rarely leaves a block beyond fp8's window.
# The weight gradient's right operand is x^T, whose channel outliers would.
WEIGHT_RIGHT_SLOTS = ("forward_y", "backward_gx")
#: [quantize.linear.mx.kernels] tile_b: which GEMMs give their right operand one fp8 scale per 128x128 tile
TILE_B_CHOICES = ("none", "forward", "weights", "all")


def tile_b_slot(tile_b: str, slot: str | None) -> bool:
    """Whether `slot`'s GEMM takes 128x128 scales for its right operand under `tile_b` (TILE_B_CHOICES):
    none; forward: W of the forward GEMM; weights: the slots of WEIGHT_RIGHT_SLOTS; all: every GEMM."""
    if tile_b not in TILE_B_CHOICES:
        raise ValueError(f"tile_b={tile_b!r}: expected one of {', '.join(TILE_B_CHOICES)}")
    return (
        tile_b == "all"
        or (tile_b == "weights" and slot in WEIGHT_RIGHT_SLOTS)
        or (tile_b == "forward" and slot == "forward_y")
    )


_CAPABILITY: dict = {}


def kernel_device(device: torch.device, capability: tuple[int, int] = (9, 0)) -> bool:
    """True on a CUDA device of at least `capability` (read once per device), unless the reference is forced."""
    if device.type != "cuda" or reference_forced() or torch.version.hip is not None:
        return False
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CAPABILITY:
        _CAPABILITY[idx] = torch.cuda.get_device_capability(idx)
    return _CAPABILITY[idx] >= capability


def fast_device(device: torch.device) -> bool:
    """True where the fused Triton + fp8 path runs: CUDA sm90+ (and not forced to the reference)."""
    return kernel_device(device, (9, 0))


def _fast_ok(t: torch.Tensor, k: int, hadamard_size: Optional[int]) -> bool:
    return (
        fast_device(t.device)
        and t.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and k % 128 == 0
        and (hadamard_size is None or hadamard_size <= 128)
    )


@dataclass
class Operand:
    """A K-major GEMM operand after (optional) Hadamard and MXFP4 quantization along K.

    Reference form: `values`. Fast form: either `fast` (fp8 + scales written), or `deferred` (the
    quantization arguments, run by `matmul` once it knows the operand's side), or `packed_src`
    (a saved packed tensor, re-encoded to fp8 by `matmul`)."""

    values: Optional[torch.Tensor] = None  # reference form: float32 dequantized values [rows, K]
    fast: object = None  # adahop.kernels.gemm.FastOperand
    deferred: Optional[dict] = None
    packed_src: Optional[MXFP4Tensor] = None

    def is_fast(self) -> bool:
        return self.values is None

    def materialize(self, tile: bool = False, left: bool = False, fix_rows: bool = False):
        """The FastOperand (fp8 form) of a fast-path operand. A GEMM's left operand takes the wide fp8
        form (e5m2, exact for block gaps up to 28 in a 128-group; cuBLAS takes e5m2 on one side), and with
        `fix_rows` flags the rows it still cannot hold for the GEMM's exact recomputation."""
        from .kernels.gemm import FastOperand
        from .kernels.quantize import fused_quantize, fused_reencode

        if self.fast is not None:
            return self.fast
        if self.deferred is not None:
            d = self.deferred
            rows = d["t"].shape[1 - d["k_dim"]]
            tile = tile and rows % 128 == 0 and not left
            if fix_rows and left:
                out = fused_quantize(**d, write_packed=True, write_fp8=True, wide=True, row_flags=True)
                return FastOperand(
                    out["fp8"], out["gscale"], out["count"], out["packed"], out["scales"], row_flags=out["row_flags"]
                )
            # the packed form is only needed on the rare correction path: written then, by a rerun
            out = fused_quantize(**d, write_packed=False, write_fp8=True, tile=tile, wide=left)
            repack = lambda: fused_quantize(**d, write_packed=True, write_fp8=False)  # noqa: E731
            return FastOperand(out["fp8"], out["gscale"], out["count"], None, None, tile, meta={"repack": repack})
        p = self.packed_src
        tile = tile and p.data.shape[0] % 128 == 0 and not left
        out = fused_reencode(p.data, p.scales, tile=tile, wide=left)
        return FastOperand(out["fp8"], out["gscale"], out["count"], p.data, p.scales, tile)

    def k_dim_size(self) -> Optional[int]:
        if self.fast is not None:
            return self.fast.fp8.shape[1]
        if self.deferred is not None:
            return self.deferred["t"].shape[self.deferred["k_dim"]]
        if self.packed_src is not None:
            return self.packed_src.data.shape[1] * 2
        return None

    def reference_values(self) -> torch.Tensor:
        if self.values is not None:
            return self.values
        if self.packed_src is not None:
            return self.packed_src.dequantize(torch.float32)
        return self.materialize().dequantize()


def to_k_major(t: torch.Tensor, k_dim: int) -> torch.Tensor:
    if t.dim() != 2 or k_dim not in (0, 1):
        raise ValueError(f"operands are 2-D with K on dim 0 or 1, got shape {tuple(t.shape)} and k_dim={k_dim}")
    return t if k_dim == 1 else t.t()


def transform(
    t: torch.Tensor,
    *,
    k_dim: int = 1,
    hadamard_size: int | None = None,
    signs: torch.Tensor | None = None,
    zero_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """K-major float32 copy of `t`, rows in `zero_rows` zeroed, then the block Hadamard along K."""
    k_major = to_k_major(t, k_dim).to(torch.float32)
    if zero_rows is not None and zero_rows.numel() > 0:
        k_major = k_major.index_fill(0, zero_rows, 0.0)
    if hadamard_size is not None:
        k_major = block_hadamard(k_major, axis=-1, block=hadamard_size, signs=signs)
    return k_major


def _sr_seed(generator: torch.Generator | None) -> int:
    if generator is not None and generator.device.type != "cpu":
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def _check_rounding(rounding: str) -> None:
    """The rounding modes of the fast path, refused by name before any kernel runs."""
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding={rounding!r} is not supported; allowed: nearest, stochastic")


def quantize(
    t: torch.Tensor,
    *,
    k_dim: int = 1,
    hadamard_size: int | None = None,
    signs: torch.Tensor | None = None,
    rounding: str = "nearest",
    zero_rows: torch.Tensor | None = None,
    packed: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Operand, MXFP4Tensor | None]:
    """Transform (see `transform`) and MXFP4-quantize an operand along K.

    Returns the operand the GEMM consumes and, if `packed`, the same quantization in packed form
    (two E2M1 codes per byte + E8M0 scales), which is what a layer saves for its backward pass.
    """
    if t.dim() == 2 and k_dim in (0, 1) and _fast_ok(t, t.shape[k_dim], hadamard_size):
        _check_rounding(rounding)
        args = dict(
            t=t,
            k_dim=k_dim,
            hadamard_size=hadamard_size,
            signs=signs,
            rounding=rounding,
            zero_rows=zero_rows,
            seed=_sr_seed(generator) if rounding == "stochastic" else 0,
        )
        if not packed:
            return Operand(deferred=args), None
        from .kernels.quantize import fused_quantize

        out = fused_quantize(**args, write_packed=True, write_fp8=False)
        saved = MXFP4Tensor(out["packed"], out["scales"], axis=-1, dtype=t.dtype)
        return Operand(packed_src=saved), saved

    k_major = transform(t, k_dim=k_dim, hadamard_size=hadamard_size, signs=signs, zero_rows=zero_rows)
    q = quantize_blocks(k_major, axis=-1, rounding=rounding, generator=generator)
    values = q.dequantize().reshape(k_major.shape)
    saved = None
    if packed:
        saved = MXFP4Tensor(q.packed_codes(), q.scale_bytes(), axis=-1, dtype=t.dtype)
    return Operand(values), saved


def quantize_bf16(
    t: torch.Tensor,
    *,
    k_dim: int = 1,
    hadamard_size: int | None = None,
    signs: torch.Tensor | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The MXFP4 values of `quantize`'s operand as bf16 [rows, K], K-major (bf16 holds every MXFP4 value of a
    block exponent in [-127, 127]): one fused pass on a fast device, the torch reference elsewhere. The same bits
    as `dequantize_bf16` of `quantize(..., packed=True)`'s packed form, the same stochastic draws included."""
    if t.dim() == 2 and k_dim in (0, 1) and _fast_ok(t, t.shape[k_dim], hadamard_size):
        _check_rounding(rounding)
        from .kernels.quantize import fused_quantize

        seed = _sr_seed(generator) if rounding == "stochastic" else 0
        out = fused_quantize(
            t, k_dim=k_dim, hadamard_size=hadamard_size, signs=signs, rounding=rounding, seed=seed,
            write_packed=False, write_fp8=False, write_bf16=True,
        )  # fmt: skip
        return out["bf16"]
    # off the fast path, quantize returns the reference's float32 values
    operand, _ = quantize(
        t, k_dim=k_dim, hadamard_size=hadamard_size, signs=signs, rounding=rounding, generator=generator
    )
    return (operand.values + 0.0).to(torch.bfloat16)  # + 0.0: zero as +0, as the packed form has it


def from_packed(saved: MXFP4Tensor) -> Operand:
    """The GEMM operand of a packed tensor saved by `quantize(..., packed=True)`."""
    if (
        saved.data.dim() == 2
        and saved.axis in (-1, 1)
        and fast_device(saved.data.device)
        and (saved.data.shape[1] * 2) % 128 == 0
    ):
        return Operand(packed_src=saved)
    return Operand(saved.dequantize(torch.float32))


def dequantize_bf16(packed: MXFP4Tensor) -> torch.Tensor:
    """The bf16 values [R, K] of a K-major packed operand: one Triton pass on a fast device, the torch reference
    elsewhere (the same bits: every MXFP4 value of a bf16 operand is a bf16 value)."""
    if packed.axis in (-1, 1) and packed.data.dim() == 2 and fast_device(packed.data.device):
        from .kernels.dequantize import dequantize_bf16 as kernel

        return kernel(packed.data, packed.scales)
    return packed.dequantize(torch.bfloat16)


def materialize_for_gemm(
    a: Operand, bt: Operand, tile_b: bool = False, fix_rows: bool = False
) -> tuple[Operand, Operand]:
    """Both operands of a fast-path GEMM in the fp8 form it takes (the left one wide, the right one with
    128x128 scales where `tile_b` asks for them), as `matmul` would write them; operands off the
    fast path are returned as they are."""
    if not (a.is_fast() and bt.is_fast()):
        return a, bt
    # 128x128 B scales only where K / 128 is a multiple of 4: on the H100 cuBLAS gives wrong results with
    # K / 128 in (2, 3) and right ones with (4, 32) (it seems to assume a scale-row alignment)
    k = a.k_dim_size()
    tile = tile_b and k is not None and (k // 128) % 4 == 0
    return Operand(fast=a.materialize(left=True, fix_rows=fix_rows)), Operand(fast=bt.materialize(tile=tile))


def matmul(
    a: Operand,
    bt: Operand,
    out_dtype: torch.dtype,
    tag: str | None = None,
    fix_rows: bool = False,
    tile_b: bool = False,
) -> torch.Tensor:
    """a @ bt^T for two quantized K-major operands, accumulated in float32. `tag` names the GEMM (its
    slot) in the fp8 path's diagnostics; `fix_rows` lets the fp8 path recompute rows of `a` whose blocks
    lie too far apart for fp8 exactly, without a host sync (adahop.kernels.gemm); `tile_b` gives the right
    operand one fp8 scale per 128x128 tile where K allows (docs/kernels.md)."""
    if a.is_fast() and bt.is_fast():
        from .kernels.gemm import fp8_matmul

        a, bt = materialize_for_gemm(a, bt, tile_b, fix_rows)
        return fp8_matmul(a.fast, bt.fast, out_dtype, tag=tag)
    return (a.reference_values() @ bt.reference_values().t()).to(out_dtype)


def bf16_matmul(a: torch.Tensor, bt: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """a @ bt^T with both operands rounded to bfloat16 and float32 accumulation (the BF16 path)."""
    if fast_device(a.device) and a.dim() == 2 and bt.dim() == 2:
        a16, b16 = a.to(torch.bfloat16), bt.to(torch.bfloat16).t()
        if out_dtype == torch.bfloat16:
            return torch.mm(a16, b16)
        try:
            return torch.mm(a16, b16, out_dtype=torch.float32).to(out_dtype)
        except TypeError:  # a torch without mm's out_dtype
            pass
        except RuntimeError as e:  # a shape cuBLAS refuses; out-of-memory and device faults propagate
            from .kernels.gemm import refused_by_cublas

            if not refused_by_cublas(e):
                raise
    out = a.to(torch.bfloat16).to(torch.float32) @ bt.to(torch.bfloat16).to(torch.float32).t()
    return out.to(out_dtype)
