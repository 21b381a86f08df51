"""GPU kernels of adahop (Triton): fused Hadamard + MXFP4 quantization with an exact fp8 re-encoding,
and the MXFP4-exact fp8 GEMM on Hopper. Dispatch lives in adahop.backend."""

# Every Triton kernel the wrappers launch, as (module, name): for the tools that build or count them
# (tests/kernels/compile_sm90.py, scripts/host_ops_count.py). Names only, so that importing this package
# does not import Triton.
JIT_KERNELS = (
    ("adahop.kernels.quantize", "_quantize_kernel"),
    ("adahop.kernels.quantize", "_quantize_kernel_t"),
    ("adahop.kernels.quantize", "_quantize_dual_kernel"),
    ("adahop.kernels.quantize", "_reencode_kernel"),
    ("adahop.kernels.quantize", "_row_split_kernel"),
    ("adahop.kernels.row_fix", "_row_fix_index_kernel"),
)
