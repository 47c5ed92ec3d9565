"""fp16 export: the loss scale and the classifier's fp16 wrapper (see :mod:`.onnx_export`)."""
from __future__ import annotations

import math

import torch

from .objectives import PRECISIONS

# fp16 exports scale the loss by this before the backward pass (the onnx_export module doc says why 256).
FP16_LOSS_SCALE = 256.0


class Fp16Classifier(torch.nn.Module):
    """logits = classifier16(x.half()).float(): fp16 inside, the fp32 interface of the fp32 export."""

    def __init__(self, classifier16: torch.nn.Module):
        super().__init__()
        self.classifier16 = classifier16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier16(x.half()).float()


def check_loss_scale(loss_scale: float | None, precision: str) -> float:
    """``loss_scale`` checked (a power of two in [2**-24, 2**24]), or the default for ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if loss_scale is None:
        return FP16_LOSS_SCALE if precision == "fp16" else 1.0
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)):
        raise TypeError(f"loss_scale must be a number (a power of two), got {type(loss_scale).__name__}")
    exponent = math.log2(loss_scale) if 0 < loss_scale < math.inf else 0.5
    if not (exponent == int(exponent) and -24 <= exponent <= 24):
        raise ValueError(f"loss_scale must be a power of two in [2**-24, 2**24] (so it changes no step), "
                         f"got {loss_scale}")
    return float(loss_scale)
