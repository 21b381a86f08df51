"""The fp8 GEMM's slower fallbacks catch only cuBLAS's refusal of a shape or dtype: out-of-memory and device
faults propagate instead of turning into a silent slow path (kernels on the interpreter without a GPU)."""

import pytest
import torch

from adahop import backend
from adahop.kernels import gemm


def _operands():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(128, 256, dtype=torch.bfloat16, device=dev)
    a, _ = backend.quantize(x, hadamard_size=32)
    b, _ = backend.quantize(x, hadamard_size=32)
    return a, b


@pytest.fixture
def fast_path(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setattr(backend, "fast_device", lambda device: True)


def _raising(error):
    def scaled_mm(*args, **kwargs):
        raise error

    return scaled_mm


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory"), torch.AcceleratorError("CUDA error: an illegal memory access")],
    ids=["oom", "device-fault"],
)
def test_out_of_memory_and_device_faults_propagate(fast_path, monkeypatch, error):
    a, b = _operands()
    monkeypatch.setattr(gemm, "_scaled_mm_parts", _raising(error))
    gemm.reset_stats()
    with pytest.raises(type(error)):
        backend.matmul(a, b, torch.float32)
    assert gemm.stats()["fallback_gemms"] == 0


def test_a_refused_shape_takes_the_fallback_with_the_same_numbers(fast_path, monkeypatch):
    a, b = _operands()
    want = backend.matmul(a, b, torch.float32)
    monkeypatch.setattr(gemm, "_scaled_mm_parts", _raising(RuntimeError("mat2 shape not supported")))
    gemm.reset_stats()
    got = backend.matmul(a, b, torch.float32)
    assert gemm.stats()["fallback_gemms"] >= 1
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory"), torch.AcceleratorError("CUDA error: an illegal memory access")],
    ids=["oom", "device-fault"],
)
def test_bf16_matmul_lets_out_of_memory_and_device_faults_propagate(monkeypatch, error):
    monkeypatch.setattr(backend, "fast_device", lambda device: True)
    monkeypatch.setattr(torch, "mm", _raising(error))
    with pytest.raises(type(error)):
        backend.bf16_matmul(torch.randn(4, 8), torch.randn(3, 8))
