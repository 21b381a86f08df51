"""GPU kernels of adahop (Triton): fused Hadamard + MXFP4 quantization with an exact fp8 re-encoding,
and the MXFP4-exact fp8 GEMM on Hopper. Dispatch lives in adahop.backend."""
