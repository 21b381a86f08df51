"""Device checks beyond the unit tests: FSDP2 (one rank), torch.compile, and a kernel-time breakdown of the
hadamard-mode linear at the Llama-3-8B MLP shape (16k tokens). Prints what it finds; never raises.

    PYTHONPATH=. python scripts/gpu_misc_check.py [--profile-only]
"""

from __future__ import annotations

import os
import sys
import traceback

import torch

from adahop.linear import AdaHOPLinear, mxfp4_linear


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def model(dev):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        AdaHOPLinear(512, 1024, bias=False, device=dev, dtype=torch.bfloat16),
        torch.nn.GELU(),
        AdaHOPLinear(1024, 512, bias=False, device=dev, dtype=torch.bfloat16,
                     forward_y="inner_outlier_extract_right", backward_gx="inner_outlier_extract_left"),
    )


def check_fsdp():
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        dev = torch.device("cuda")
        x = torch.randn(2048, 512, device=dev, dtype=torch.bfloat16)
        ref = model(dev)
        ref(x).float().square().mean().backward()
        m = model(dev)
        for layer in m:
            if isinstance(layer, AdaHOPLinear):
                fully_shard(layer)
        fully_shard(m)
        m(x).float().square().mean().backward()
        errs = [rel(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad, q.grad)
                for p, q in zip(m.parameters(), ref.parameters())]
        print(f"FSDP2 (1 rank): grads vs plain module rel err {errs}  {'OK' if max(errs) < 1e-2 else 'MISMATCH'}")
    finally:
        dist.destroy_process_group()


def check_compile():
    dev = torch.device("cuda")
    x = torch.randn(2048, 512, device=dev, dtype=torch.bfloat16, requires_grad=True)
    m = model(dev)
    y_e = m(x)
    y_e.float().square().mean().backward()
    g_e = x.grad.clone()
    x.grad = None
    mc = torch.compile(m)
    y_c = mc(x)
    y_c.float().square().mean().backward()
    print(f"torch.compile: y rel err {rel(y_c, y_e):.2e}, gx rel err {rel(x.grad, g_e):.2e}")


def profile_breakdown(T=16384, fin=4096, fout=14336, sr=False):
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda")
    x = torch.randn(T, fin, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(fout, fin, device=dev, dtype=torch.bfloat16) / fin**0.5)
    gy = torch.randn(T, fout, device=dev, dtype=torch.bfloat16)

    def step():
        x.grad = None
        w.grad = None
        mxfp4_linear(x, w, use_sr_grad=sr).backward(gy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(f"--- kernel time, hadamard mode fwd+bwd {T}x{fin}->{fout}, sr={sr}, 5 steps ---")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))


if __name__ == "__main__":
    steps = [profile_breakdown] if "--profile-only" in sys.argv else [check_fsdp, check_compile, profile_breakdown]
    for fn in steps:
        try:
            fn()
        except Exception:
            print(f"{fn.__name__} FAILED")
            traceback.print_exc()
