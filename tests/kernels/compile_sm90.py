"""Compile the hardware branches of the quantize kernels (HW_CVT: the fp8 conversions the interpreter
never runs) for sm_90 without a GPU: a Triton error there would otherwise first show on a device call.
Run as a script (TRITON_INTERPRET unset: the interpreter's kernels cannot be compiled); prints one line per
kernel and exits 1 on any failure. Used by test_compile_sm90.py."""

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from adahop.kernels import quantize as q

TYPES = dict(x_ptr="*i16", signs_ptr="*fp32", zero_ptr="*i8", u_ptr="*fp32", packed_ptr="*u8", scales_ptr="*u8",
             fp8_ptr="*u8", gscale_ptr="*fp32", count_ptr="*i32", rowflag_ptr="*u8", signs_a_ptr="*fp32",
             signs_b_ptr="*fp32", packed_b_ptr="*u8", scales_b_ptr="*u8", packed_a_ptr="*u8", scales_a_ptr="*u8", rows_ptr="*i64", hi_ptr="*u8",
             hi_gscale_ptr="*fp32", lo_ptr="*u8", lo_gscale_ptr="*fp32")
H32 = q.hadamard_scale(32)
CASES = [
    ("quantize, K contiguous, wide, row flags", q._quantize_kernel,
     dict(BR=32, K_CONTIG=True, HSIZE=32, HSCALE=H32, HAS_SIGNS=True, HAS_ZERO=True, ROUNDING=0, WRITE_PACKED=True,
          WRITE_FP8=True, TILE=False, IN_BF16=True, HVARIANT=1, HW_CVT=True, WIDE=True, ROWFLAG=1)),
    ("quantize, transposed, e4m3, stochastic", q._quantize_kernel,
     dict(BR=16, K_CONTIG=False, HSIZE=32, HSCALE=H32, HAS_SIGNS=False, HAS_ZERO=False, ROUNDING=1, WRITE_PACKED=True,
          WRITE_FP8=True, TILE=False, IN_BF16=True, HVARIANT=0, HW_CVT=True, WIDE=False, ROWFLAG=0)),
    ("quantize in the loaded layout, wide", q._quantize_kernel_t,
     dict(BR=32, HSIZE=0, HSCALE=1.0, HAS_SIGNS=False, HAS_ZERO=False, ROUNDING=0, WRITE_PACKED=True, WRITE_FP8=True,
          IN_BF16=True, HW_CVT=True, WIDE=True)),
    ("dual (both axes of x)", q._quantize_dual_kernel,
     dict(BR=32, HSIZE_A=32, HSCALE_A=H32, HAS_SIGNS_A=True, HSIZE_B=32, HSCALE_B=H32, HAS_SIGNS_B=True, ROUNDING=0,
          ROWFLAG_A=False, IN_BF16=True, HVARIANT=1, HW_CVT=True)),
    ("dual (both axes of g), stochastic", q._quantize_dual_kernel,
     dict(BR=32, HSIZE_A=32, HSCALE_A=H32, HAS_SIGNS_A=False, HSIZE_B=32, HSCALE_B=H32, HAS_SIGNS_B=False, ROUNDING=1,
          ROWFLAG_A=True, IN_BF16=True, HVARIANT=1, HW_CVT=True)),
    ("re-encode, wide", q._reencode_kernel, dict(BR=32, TILE=False, HW_CVT=True, WIDE=True)),
    ("row split", q._row_split_kernel, dict(BR=32, HW_CVT=True)),
]


def main() -> int:
    target = GPUTarget("cuda", 90, 32)
    failed = 0
    for name, fn, consts in CASES:
        sig = {a: "constexpr" if a in consts else TYPES.get(a, "i32") for a in fn.arg_names}
        try:
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
            print(f"ok {name}")
        except Exception as e:  # report every kernel, then fail
            failed += 1
            print(f"FAILED {name}: {type(e).__name__}: {str(e)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
