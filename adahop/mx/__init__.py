"""MXFP4 format: E2M1 elements in blocks of 32 sharing one E8M0 scale."""

from .format import BLOCK_SIZE, E2M1_MAGNITUDES, E2M1_MAX, E8M0_BIAS, E8M0_NAN, ROUNDINGS
from .quantize import dequantize_mxfp4, fake_quantize_mxfp4, quantize_blocks, quantize_mxfp4
from .tensor import MXFP4Tensor

__all__ = [
    "BLOCK_SIZE",
    "E2M1_MAX",
    "E2M1_MAGNITUDES",
    "E8M0_BIAS",
    "E8M0_NAN",
    "ROUNDINGS",
    "MXFP4Tensor",
    "dequantize_mxfp4",
    "fake_quantize_mxfp4",
    "quantize_blocks",
    "quantize_mxfp4",
]
