"""GPU kernels of adahop (Triton): fused Hadamard + MXFP4 quantization with an exact fp8 re-encoding,
the MXFP4-exact fp8 GEMM on Hopper, and flash-style MXFP4 attention. Dispatch lives in adahop.backend."""

import contextlib
import importlib

# Every Triton kernel the wrappers launch, as (module, name): for the tools that build or count them
# (tests/kernels/compile_sm90.py, scripts/host_ops_count.py). Names only, so that importing this package
# does not import Triton.
JIT_KERNELS = (
    ("adahop.kernels.quantize", "_quantize_kernel"),
    ("adahop.kernels.quantize", "_quantize_kernel_t"),
    ("adahop.kernels.quantize", "_reencode_kernel"),
    ("adahop.kernels.quantize", "_row_split_kernel"),
    ("adahop.kernels.dequantize", "_dequantize_kernel"),
    ("adahop.kernels.row_fix", "_row_fix_index_kernel"),
    ("adahop.kernels.attention", "_operand_kernel"),
    ("adahop.kernels.attention", "_forward_kernel"),
    ("adahop.kernels.attention", "_dq_kernel"),
    ("adahop.kernels.attention", "_dkdv_kernel"),
    ("adahop.kernels.attention", "_gqa_sum_kernel"),
)


@contextlib.contextmanager
def kernels_replaced(wrap):
    """Inside the block every kernel of JIT_KERNELS is `wrap(jit)` where the wrappers look it up (restored
    after, also on error); yields the stand-ins by kernel name. For the tools that record or count the
    launches without changing the wrappers."""
    kernels = [
        (mod, name, getattr(mod, name)) for mod, name in ((importlib.import_module(m), n) for m, n in JIT_KERNELS)
    ]
    standins = {}
    try:
        for mod, name, jit in kernels:
            standins[name] = wrap(jit)
            setattr(mod, name, standins[name])
        yield standins
    finally:
        for mod, name, jit in kernels:
            setattr(mod, name, jit)
