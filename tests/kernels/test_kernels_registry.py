"""adahop.kernels.JIT_KERNELS and kernels_replaced, the stand-in swap of the tools that record or count
launches (tests/kernels/compile_sm90.py, scripts/host_ops_count.py)."""

import importlib

import pytest
from triton.runtime import JITFunction
from triton.runtime.interpreter import InterpretedFunction

from adahop.kernels import JIT_KERNELS, kernels_replaced


def test_every_listed_kernel_is_a_triton_kernel():
    for mod, name in JIT_KERNELS:  # compiled, or on the interpreter (TRITON_INTERPRET=1, conftest.py)
        assert isinstance(getattr(importlib.import_module(mod), name), (JITFunction, InterpretedFunction)), name


def test_stand_ins_are_seen_inside_and_the_kernels_restored_even_on_error():
    real = {name: getattr(importlib.import_module(mod), name) for mod, name in JIT_KERNELS}
    with pytest.raises(RuntimeError, match="inside"):
        with kernels_replaced(lambda jit: ("stand-in", jit)) as standins:
            assert set(standins) == set(real)
            for mod, name in JIT_KERNELS:
                assert getattr(importlib.import_module(mod), name) == ("stand-in", real[name])
            raise RuntimeError("inside")
    for mod, name in JIT_KERNELS:
        assert getattr(importlib.import_module(mod), name) is real[name]
