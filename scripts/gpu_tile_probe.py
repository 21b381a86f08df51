"""Which layout does torch._scaled_mm (cuBLAS blockwise) read for 128x128 B scales? Compare against the
float64 product of the dequantized operands, with random power-of-two scales per tile (uniform scales
hide layout mistakes). Prints the relative error of each candidate."""

import torch

M, N, K = 256, 384, 512
dev = "cuda"
a8 = torch.randn(M, K, device=dev).clamp(-8, 8).to(torch.float8_e4m3fn)
b8 = torch.randn(N, K, device=dev).clamp(-8, 8).to(torch.float8_e4m3fn)
sa = torch.exp2(torch.randint(-3, 4, (M, K // 128), device=dev).float())  # [M, K/128]
sb = torch.exp2(torch.randint(-3, 4, (N // 128, K // 128), device=dev).float())  # [N/128, K/128]
A = a8.double() * sa.double().repeat_interleave(128, 1)
B = b8.double() * sb.double().repeat_interleave(128, 0).repeat_interleave(128, 1)
exact = A @ B.t()
for name, scale_b in (("sb.t() (view of [N/128,K/128])", sb.t()), ("sb.t().contiguous()", sb.t().contiguous()),
                      ("sb (no transpose)", sb)):
    try:
        out = torch._scaled_mm(a8, b8.t(), scale_a=sa.t().contiguous().t(), scale_b=scale_b, out_dtype=torch.float32)
        print(f"B 128x128 {name}: rel err {((out.double() - exact).norm() / exact.norm()).item():.2e}")
    except Exception as exc:
        print(f"B 128x128 {name}: {type(exc).__name__}: {str(exc)[:120]}")
sb1 = torch.exp2(torch.randint(-3, 4, (N, K // 128), device=dev).float())  # 1x128 B scales [N, K/128]
B1 = b8.double() * sb1.double().repeat_interleave(128, 1)
exact1 = A @ B1.t()
out = torch._scaled_mm(a8, b8.t(), scale_a=sa.t().contiguous().t(), scale_b=sb1.t().contiguous(), out_dtype=torch.float32)
print(f"B 1x128 [K/128, N] contiguous: rel err {((out.double() - exact1).norm() / exact1.norm()).item():.2e}")
