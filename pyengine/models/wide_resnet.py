"""Wide ResNets (Zagoruyko & Komodakis, 2016) as used in the robustness literature.

A WRN-d-k is a pre-activation ResNet with three stages of (d - 4) / 6 blocks, widths
16k, 32k, 64k and a 16-channel stem.
"""
from __future__ import annotations

from .preact_resnet import PreActResNet
from .registry import ModelConfig, register_model


def wide_resnet(depth: int, widen: int, num_classes=10, **kwargs) -> PreActResNet:
    if (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    return PreActResNet((n, n, n), (16 * widen, 32 * widen, 64 * widen), num_classes, stem_width=16, **kwargs)


@register_model(ModelConfig(num_features=640, head_hidden=256, head_out=16))
def wide_resnet28_10(num_classes=10, **kwargs):
    return wide_resnet(28, 10, num_classes, **kwargs)


@register_model(ModelConfig(num_features=640, head_hidden=256, head_out=16))
def wide_resnet34_10(num_classes=10, **kwargs):
    return wide_resnet(34, 10, num_classes, **kwargs)
