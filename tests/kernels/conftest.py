"""Kernel tests run the Triton kernels on the GPU when there is one, else on the CPU through Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton.jit decorates the kernels, hence here)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
