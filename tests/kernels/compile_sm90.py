"""Compile the hardware branches of the quantize kernels (HW_CVT: the fp8 conversions the interpreter
never runs) for sm_90 without a GPU: a Triton error there would otherwise first show on a device call.
Run as a script (TRITON_INTERPRET unset: the interpreter's kernels cannot be compiled); prints one line per
kernel and exits 1 on any failure. Each kernel is built with the warps it is launched with
(kernels.quantize.TUNING), and its register use is read from the cubin (cuobjdump, bundled with Triton): a
kernel that spills registers to local memory (a stack beyond the case's stated bound, 0 unless noted) fails
too, since that would slow it several times on the GPU, where no CPU test would see it. Also prints SASS instructions per element, a static measure of
the quantizers' ALU work (they are ALU-bound). Used by test_compile_sm90.py."""

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from adahop.kernels import quantize as q

TYPES = dict(x_ptr="*i16", signs_ptr="*fp32", zero_ptr="*i8", u_ptr="*fp32", packed_ptr="*u8", scales_ptr="*u8",
             fp8_ptr="*u8", gscale_ptr="*fp32", count_ptr="*i32", rowflag_ptr="*u8", signs_a_ptr="*fp32",
             signs_b_ptr="*fp32", packed_b_ptr="*u8", scales_b_ptr="*u8", packed_a_ptr="*u8", scales_a_ptr="*u8", rows_ptr="*i64", hi_ptr="*u8",
             hi_gscale_ptr="*fp32", lo_ptr="*u8", lo_gscale_ptr="*fp32")
H32 = q.hadamard_scale(32)
T = q.TUNING  # the launch choices: each case is built as it is launched


def quantize_case(launch: str, hvariant: str, **consts) -> tuple[dict, int]:
    """(constexprs, warps) of a _quantize_kernel case launched as TUNING[launch]: a 32-point Hadamard on
    bf16 input, both forms, e4m3, nearest rounding, unless `consts` says otherwise."""
    base = dict(BR=T[launch][0], K_CONTIG=True, HSIZE=32, HSCALE=H32, HAS_SIGNS=False, HAS_ZERO=False, ROUNDING=0,
                WRITE_PACKED=True, WRITE_FP8=True, TILE=False, IN_BF16=True, HVARIANT=T[hvariant], HW_CVT=True,
                WIDE=False, ROWFLAG=0)
    return dict(base, **consts), T[launch][1]


CASES = [
    ("quantize, K contiguous, wide, row flags", q._quantize_kernel,
     *quantize_case("contig", "hv_contig", HAS_SIGNS=True, HAS_ZERO=True, WIDE=True, ROWFLAG=1)),
    ("quantize, transposed, e4m3, stochastic", q._quantize_kernel,
     *quantize_case("strided", "hv_strided", K_CONTIG=False, ROUNDING=1)),
    ("quantize in the loaded layout, wide", q._quantize_kernel_t,
     dict(BR=T["strided_t"][0], HSIZE=0, HSCALE=1.0, HAS_SIGNS=False, HAS_ZERO=False, ROUNDING=0, WRITE_PACKED=True,
          WRITE_FP8=True, IN_BF16=True, HW_CVT=True, WIDE=True), T["strided_t"][1]),
    ("dual (both axes of x)", q._quantize_dual_kernel,
     dict(BR=32, HSIZE_A=32, HSCALE_A=H32, HAS_SIGNS_A=True, HSIZE_B=32, HSCALE_B=H32, HAS_SIGNS_B=True, ROUNDING=0,
          ROWFLAG_A=False, IN_BF16=True, HVARIANT=T["hv_contig"], HW_CVT=True), T["dual_warps"]),
    ("dual (both axes of g), stochastic", q._quantize_dual_kernel,
     dict(BR=32, HSIZE_A=32, HSCALE_A=H32, HAS_SIGNS_A=False, HSIZE_B=32, HSCALE_B=H32, HAS_SIGNS_B=False, ROUNDING=1,
          ROWFLAG_A=True, IN_BF16=True, HVARIANT=T["hv_contig"], HW_CVT=True), T["dual_warps"]),
    ("re-encode, wide", q._reencode_kernel, dict(BR=T["reencode"][0], TILE=False, HW_CVT=True, WIDE=True),
     T["reencode"][1]),
    ("re-encode, 128x128 tile", q._reencode_kernel, dict(BR=T["tile"][0], TILE=True, HW_CVT=True, WIDE=False),
     T["tile"][1]),
    ("quantize, 128x128 tile, fp8 form (W of the forward GEMM)", q._quantize_kernel,
     *quantize_case("tile", "hv_tile", TILE=True, WRITE_PACKED=False)),
    # known: the transposed tile (W^T, ADAHOP_TILE_B=weights or 1 only, measured slow) keeps a small spill
    ("quantize, 128x128 tile, transposed (W^T)", q._quantize_kernel,
     *quantize_case("tile", "hv_tile", TILE=True, WRITE_PACKED=False, K_CONTIG=False), 16),
    ("row split", q._row_split_kernel, dict(BR=T["reencode"][0], HW_CVT=True), T["reencode"][1]),
]


BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def resource_use(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack bytes, SASS instructions) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", path], capture_output=True, text=True,
                              check=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", res).group(1)) for key in ("REG", "STACK"))
    n = sum(1 for line in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]+\*/\s+(?!NOP\b)\S", line))
    return regs, stack, n


def main() -> int:
    target = GPUTarget("cuda", 90, 32)
    failed = 0
    for name, fn, consts, warps, *allowed in CASES:
        max_stack = allowed[0] if allowed else 0  # bytes of spilled registers per thread tolerated
        sig = {a: "constexpr" if a in consts else TYPES.get(a, "i32") for a in fn.arg_names}
        try:
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                               options={"num_warps": warps})
            regs, stack, n = resource_use(k.asm["cubin"])
            per_elem = n / (consts["BR"] * 128 / (32 * warps))
            line = f"{name}: {warps} warps, {regs} registers, stack {stack} B, {per_elem:.0f} SASS instructions per element"
            if stack > max_stack:
                failed += 1
                print(f"FAILED (spills registers) {line}")
            else:
                print(f"ok {line}")
        except Exception as e:  # report every kernel, then fail
            failed += 1
            print(f"FAILED {name}: {type(e).__name__}: {str(e)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
