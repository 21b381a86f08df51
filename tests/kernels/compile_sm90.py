"""Build the quantize kernels for sm_90 without a GPU, exactly as their wrappers launch them: a Triton error
in the hardware branches (HW_CVT: the fp8 conversions the interpreter never runs) would otherwise first
show on a device call, and so would register spills.

Each case calls a real wrapper (fused_quantize, fused_reencode, fused_row_split) on
CPU tensors with the kernel replaced by a recorder; the recorded arguments are specialized as a launch
specializes them (integers equal to 1 become constants, pointers and integers divisible by 16 carry that
fact, which is what lets Triton vectorize loads and stores), the fp8 conversion is switched to its hardware
form, and the kernel is compiled for sm_90 with the launch's warps. Registers and spilled bytes come from
the cubin (cuobjdump, bundled with Triton): a spill beyond the case's stated bound (0 unless noted) fails,
since it would slow the kernel several times on the GPU where no CPU test sees it. SASS instructions per
element are printed: a static measure of the quantizers' ALU work (they are ALU-bound).

Run as a script (TRITON_INTERPRET unset: the interpreter's kernels cannot be compiled); prints one line per
case and exits 1 on any failure. Used by test_compile_sm90.py."""

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from adahop.kernels import attention, dequantize, kernels_replaced, row_fix
from adahop.kernels import quantize as q

R, K = 512, 1024  # multiples of 16 like every real shape: the specialization is what matters, not the size


class Recorder:
    """Stands in for a JIT kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self, jit):
        self.jit, self.launches = jit, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def record(call, kernel=None):
    """(jit function, positional args, keyword args) of the one kernel launch `call()` makes (of the one launch
    of the kernel named `kernel`, for a call that launches several)."""
    with kernels_replaced(Recorder) as recorders:
        call()
    launches = [(rec.jit, *launch) for name, rec in recorders.items() for launch in rec.launches]
    if kernel is not None:
        launches = [launch for launch in launches if launch[0].__name__ == kernel]
    assert len(launches) == 1, f"expected one kernel launch, got {len(launches)}"
    return launches[0]


def bf16(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


def heads(t, d, h=2):
    """An attention operand [1, h, t, d] in bf16, as the attention wrappers take them."""
    return bf16(1, h, t, d)


def attention_backward(stochastic=True):
    op = [heads(512, 128) for _ in range(9)]  # 7 quantized operands, do and o
    return attention.backward(*op, torch.zeros(1, 2, 512, 2), 0.1, True, stochastic, (torch.bfloat16,) * 3)


SIGNS = torch.ones(K)
# (name, the wrapper call, spilled bytes per thread tolerated[, the kernel, where the call launches several])
CASES = [
    (
        "quantize x along K, H32, wide + packed + row flags (input-gradient g)",
        lambda: q.fused_quantize(bf16(R, K), hadamard_size=32, signs=SIGNS, wide=True, row_flags=True),
        0,
    ),
    (
        "quantize along K, H32, fp8 only (deferred operand)",
        lambda: q.fused_quantize(bf16(R, K), hadamard_size=32, write_packed=False),
        0,
    ),
    (
        "quantize along K, H32, stochastic",
        lambda: q.fused_quantize(bf16(R, K), hadamard_size=32, rounding="stochastic", seed=1),
        0,
    ),
    (
        "quantize along dim 0, H32, packed only (x^T saved for backward)",
        lambda: q.fused_quantize(bf16(K, R), k_dim=0, hadamard_size=32, write_fp8=False),
        0,
    ),
    (
        "quantize along dim 0, H32, wide fp8 (g^T)",
        lambda: q.fused_quantize(bf16(K, R), k_dim=0, hadamard_size=32, write_packed=False, wide=True),
        0,
    ),
    (
        "quantize along dim 0, H32, wide fp8, stochastic (g^T with SR)",
        lambda: q.fused_quantize(
            bf16(K, R), k_dim=0, hadamard_size=32, write_packed=False, wide=True, rounding="stochastic", seed=1
        ),
        0,
    ),
    (
        "quantize along dim 0, no Hadamard, stochastic (the loaded-layout kernel)",
        lambda: q.fused_quantize(bf16(K, R), k_dim=0, write_packed=False, wide=True, rounding="stochastic", seed=1),
        0,
    ),
    (
        "quantize along dim 0, no Hadamard (the loaded-layout kernel)",
        lambda: q.fused_quantize(bf16(K, R), k_dim=0, write_packed=False, wide=True),
        0,
    ),
    (
        "quantize, 128x128 tile, fp8 (W of the forward GEMM)",
        lambda: q.fused_quantize(bf16(R, K), hadamard_size=32, write_packed=False, tile=True),
        0,
    ),
    (
        "quantize, 128x128 tile, along dim 0 (W^T)",
        lambda: q.fused_quantize(bf16(K, R), k_dim=0, hadamard_size=32, write_packed=False, tile=True),
        0,
    ),
    (
        "re-encode, wide",
        lambda: q.fused_reencode(
            torch.zeros(R, K // 2, dtype=torch.uint8), torch.zeros(R, K // 32, dtype=torch.uint8), wide=True
        ),
        0,
    ),
    (
        "re-encode, 128x128 tile",
        lambda: q.fused_reencode(
            torch.zeros(R, K // 2, dtype=torch.uint8), torch.zeros(R, K // 32, dtype=torch.uint8), tile=True
        ),
        0,
    ),
    (
        "row split",
        lambda: q.fused_row_split(
            torch.zeros(R, K // 2, dtype=torch.uint8),
            torch.zeros(R, K // 32, dtype=torch.uint8),
            torch.arange(0, R, 7),
            torch.zeros(1, dtype=torch.int32),
        ),
        0,
    ),
    (
        "quantize along K, H32, bf16 values only (grouped GEMM operands)",
        lambda: q.fused_quantize(bf16(R, K), hadamard_size=32, write_packed=False, write_fp8=False, write_bf16=True),
        0,
    ),
    (
        "quantize along dim 0, H32, stochastic, bf16 values only (grouped weight-gradient g^T)",
        lambda: q.fused_quantize(
            bf16(K, R),
            k_dim=0,
            hadamard_size=32,
            rounding="stochastic",
            seed=1,
            write_packed=False,
            write_fp8=False,
            write_bf16=True,
        ),  # fmt: skip
        0,
    ),
    (
        "packed MXFP4 -> bf16 (the saved x of the grouped weight gradient)",
        lambda: dequantize.dequantize_bf16(
            torch.zeros(R, K // 2, dtype=torch.uint8), torch.zeros(R, K // 32, dtype=torch.uint8)
        ),
        0,
    ),
    (
        "row slots and counters (one program; per element: per flag of a chunk)",
        lambda: row_fix.row_fix_index(
            torch.zeros(R, dtype=torch.uint8),
            16,
            torch.zeros(1, dtype=torch.int64),
            torch.zeros(1, dtype=torch.int32),
            torch.zeros(1, dtype=torch.int64),
            1 << 20,
        ),
        0,
    ),
    (
        "attention operand along head_dim, H32, stochastic (dO for dP)",
        lambda: attention.operand(heads(512, 128), hadamard_size=32, stochastic=True),
        0,
    ),
    (
        "attention operand along the sequence (V for P V)",
        lambda: attention.operand(heads(512, 64), along_sequence=True),
        0,
    ),
    (
        "attention operands, both forms, head_dim 128, H32, stochastic (dO in the backward)",
        lambda: attention.operands(heads(512, 128), hadamard_size=32, stochastic=True),
        0,
    ),
    (
        "attention forward, head_dim 128, causal",
        lambda: attention.forward(heads(512, 128), heads(512, 128), heads(512, 128), 0.1, True, torch.bfloat16),
        0,
    ),
    (
        "attention forward, head_dim 64, GQA",
        lambda: attention.forward(heads(512, 64, 4), heads(512, 64), heads(512, 64), 0.1, True, torch.bfloat16),
        0,
    ),
    ("attention dQ, head_dim 128, stochastic", attention_backward, 0, "_dq_kernel"),
    ("attention dK dV, head_dim 128, stochastic", attention_backward, 0, "_dkdv_kernel"),
    (
        "attention GQA sum of dK / dV, bf16 out",
        lambda: attention.gqa_sum(torch.zeros(1, 8, 512, 128), 4, torch.bfloat16),
        0,
    ),
    ("attention dQ, head_dim 128", lambda: attention_backward(False), 0, "_dq_kernel"),
    ("attention dK dV, head_dim 128", lambda: attention_backward(False), 0, "_dkdv_kernel"),
]

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def resource_use(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack bytes, SASS instructions) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run(
            [os.path.join(BIN, "cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [os.path.join(BIN, "nvdisasm"), "-c", path], capture_output=True, text=True, check=True
        ).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", res).group(1)) for key in ("REG", "STACK"))
    n = sum(1 for line in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]+\*/\s+(?!NOP\b)\S", line))
    return regs, stack, n


def build(jit, args, kwargs):
    """Compile the recorded launch for sm_90 as the launcher would specialize it; returns (kernel, warps)."""
    kwargs = dict(kwargs)
    warps = kwargs.pop("num_warps", 4)
    if "HW_CVT" in kwargs:
        kwargs["HW_CVT"] = True  # the CPU tensors chose the integer form; the GPU runs the hardware conversion
    runtime = [name for name in jit.arg_names if name not in kwargs]
    assert len(runtime) == len(args), (jit.__name__, runtime, len(args))
    signature, constexprs, attrs = {}, dict(kwargs), {}
    for i, name in enumerate(jit.arg_names):
        if name in kwargs:
            signature[name] = "constexpr"
            continue
        kind, key = native_specialize_impl(BaseBackend, args[runtime.index(name)], False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = key
        elif key is not None:  # a float carries no specialization
            attrs[(i,)] = BaseBackend.parse_attr(key)
    src = ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}), warps, kwargs


def main() -> int:
    failed = 0
    for name, call, max_stack, *kernel_name in CASES:
        try:
            jit, args, kwargs = record(call, *kernel_name)
            kernel, warps, consts = build(jit, args, kwargs)
            regs, stack, n = resource_use(kernel.asm["cubin"])
            elems = (  # what one program handles at once
                consts["BR"] * 128
                if "BR" in consts
                else consts["BT"] * consts["DP"]
                if "BT" in consts
                else consts["BM"] * consts["BN"]
                if "BM" in consts
                else consts["BLOCK"]
                if "BLOCK" in consts
                else consts["CHUNK"]
            )
            per_elem = n / (elems / (32 * warps))
            line = (
                f"{name}: {jit.__name__}, {warps} warps, {regs} registers, stack {stack} B, "
                f"{per_elem:.0f} SASS instructions per element"
            )
            if stack > max_stack:
                failed += 1
                print(f"FAILED (spills registers) {line}")
            else:
                print(f"ok {line}")
        except Exception as e:  # report every case, then fail
            failed += 1
            print(f"FAILED {name}: {type(e).__name__}: {str(e)[:2000]}")
    print(f"cases: {len(CASES)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
