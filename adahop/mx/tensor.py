"""A packed MXFP4 tensor: what the AdaHOP linear saves for backward instead of a BF16 copy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantize import dequantize_mxfp4, quantize_mxfp4


@dataclass
class MXFP4Tensor:
    data: torch.Tensor  # uint8, two E2M1 codes per byte along `axis`
    scales: torch.Tensor  # uint8 E8M0, one per 32 elements along `axis`
    axis: int
    dtype: torch.dtype  # dtype of the tensor it stands for

    @classmethod
    def from_tensor(cls, x: torch.Tensor, axis: int, rounding: str = "nearest", generator=None) -> "MXFP4Tensor":
        data, scales = quantize_mxfp4(x, axis, rounding, generator)
        return cls(data, scales, axis, x.dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_mxfp4(self.data, self.scales, self.axis, dtype or self.dtype)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()
