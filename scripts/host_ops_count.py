"""What one AdaHOP linear asks of the host per forward+backward on the fast path: Triton launches, fp8 GEMM
calls and aten ops (allocations among them), counted per mode. The counts do not depend on the device, so
this runs anywhere (without a GPU the Triton kernels run on the interpreter and the fast path is forced on).
Where a training step waits on the host (small batches), fewer is faster.

    python scripts/host_ops_count.py [--tokens 256] [--features 256] [--modes hadamard none ...]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from adahop import backend  # noqa: E402
from adahop.kernels import deferred, gemm, kernels_replaced  # noqa: E402
from adahop.linear import mxfp4_linear  # noqa: E402

ALLOCATING = ("empty", "empty_strided", "zeros", "new_zeros", "new_empty", "full", "zeros_like", "empty_like")
MODES = ("hadamard", "inner_outlier_extract_left", "inner_outlier_extract_right", "full_precision", "none")


class Counts(TorchDispatchMode):
    """aten ops by name while not paused (the kernels' and the CPU GEMM stand-in's own work is paused)."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}
        self.launches = self.gemms = 0
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "adahop":  # the linear's custom ops: run their bodies here, to count their ops
            from torch._library.custom_ops import _maybe_get_opdef

            TorchDispatchMode.__enter__(self)  # the mode is off while it dispatches: on again for the body
            try:
                return _maybe_get_opdef(func)._init_fn(*args, **(kwargs or {}))
            finally:
                TorchDispatchMode.__exit__(self, None, None, None)
        if not self.paused:
            name = func.overloadpacket.__name__
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    # Tensor methods that read a value back on the host: on a GPU each waits for the device (on a CPU
    # tensor some skip the dispatcher, so they are counted here, by name, as "host_read:<method>")
    HOST_READS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__")

    def __enter__(self):  # noqa: D105
        self._methods = {name: getattr(torch.Tensor, name) for name in self.HOST_READS}
        for name, method in self._methods.items():
            setattr(torch.Tensor, name, self._recording(name, method))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._methods.items():
            setattr(torch.Tensor, name, method)
        return super().__exit__(*exc)

    def _recording(self, name, method):
        def read(tensor, *args, **kwargs):
            if not self.paused:
                key = f"host_read:{name}"
                self.ops[key] = self.ops.get(key, 0) + 1
            return method(tensor, *args, **kwargs)

        return read

    def snapshot(self) -> tuple[int, int, int, int]:
        ops = sum(self.ops.values())
        allocs = sum(n for name, n in self.ops.items() if name in ALLOCATING)
        return self.launches, self.gemms, ops, allocs


class _CountedKernel:
    def __init__(self, jit, counts: Counts):
        self.jit, self.counts = jit, counts

    def __getitem__(self, grid):
        launch = self.jit[grid]

        def run(*args, **kwargs):
            self.counts.launches += 1
            self.counts.paused += 1
            try:
                return launch(*args, **kwargs)
            finally:
                self.counts.paused -= 1

        return run


def count_linear(mode: str, tokens: int, features: int, by_op: dict | None = None) -> tuple[tuple, tuple]:
    """((launches, GEMMs, aten ops, allocations) of the forward, the same of the backward) for one linear
    with every slot in `mode` (OE-left runs hadamard for the weight gradient, as in training); `by_op`, if
    given, receives the aten op counts of the forward ("fwd") and the whole step ("all")."""
    counts = Counts()
    real_parts, real_fast = gemm._scaled_mm_parts, backend.fast_device

    def parts(*args, **kwargs):
        counts.gemms += 1
        counts.paused += 1
        try:
            return real_parts(*args, **kwargs)
        finally:
            counts.paused -= 1

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x = torch.randn(tokens, features, dtype=torch.bfloat16, device=dev, requires_grad=True)
    w = (torch.randn(features, features, device=dev) / features**0.5).to(torch.bfloat16).requires_grad_()
    gy = torch.randn(tokens, features, dtype=torch.bfloat16, device=dev)
    try:
        gemm._scaled_mm_parts = parts
        if dev == "cpu":
            backend.fast_device = lambda device: True
        with (
            kernels_replaced(lambda jit: _CountedKernel(jit, counts)),
            deferred.deferred_check(torch.device(dev)),
            counts,
        ):
            y = mxfp4_linear(x, w, forward_y=mode, backward_gx=mode, backward_gw=mode, outlier_k=16)
            fwd = counts.snapshot()
            if by_op is not None:
                by_op["fwd"] = dict(counts.ops)
            y.backward(gy)
            total = counts.snapshot()
            if by_op is not None:
                by_op["all"] = dict(counts.ops)
    finally:
        gemm._scaled_mm_parts, backend.fast_device = real_parts, real_fast
    return fwd, tuple(t - f for t, f in zip(total, fwd))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--ops", action="store_true", help="also list the aten ops of each mode by name")
    args = p.parse_args(argv)
    print(f"one linear [{args.tokens} x {args.features}] x [{args.features} x {args.features}], forward / backward")
    print("| mode | Triton launches | fp8 GEMMs | aten ops | of them allocations |\n| --- | --- | --- | --- | --- |")
    listed = []
    for mode in args.modes:
        by_op: dict = {}
        fwd, bwd = count_linear(mode, args.tokens, args.features, by_op)
        print(f"| {mode} | " + " | ".join(f"{f} / {b}" for f, b in zip(fwd, bwd)) + " |")
        listed.append((mode, by_op))
    if args.ops:
        for mode, by_op in listed:
            ops = {name: (by_op["fwd"].get(name, 0), n - by_op["fwd"].get(name, 0)) for name, n in by_op["all"].items()}
            print(
                f"\n{mode}, aten ops forward / backward: "
                + ", ".join(f"{name} {f}/{b}" for name, (f, b) in sorted(ops.items(), key=lambda kv: -sum(kv[1])))
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
