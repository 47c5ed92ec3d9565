"""Wide ResNets (Zagoruyko & Komodakis, 2016) as used in the robustness literature."""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from .base import ImageClassifier
from .registry import ModelConfig, register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(ImageClassifier):
    def __init__(self, depth: int, widen: int, num_classes=10, *, mean, std):
        super().__init__(mean, std)
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        layers, in_planes = [], 16
        for stage, planes in enumerate(widths):
            for i in range(n):
                layers.append(WideBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x):
        out = self.layers(self.conv1(self.normalize(x)))
        return F.relu(self.bn(out)).mean(dim=(2, 3))


@register_model(ModelConfig(num_features=640, head_hidden=256, head_out=16))
def wide_resnet28_10(num_classes=10, **kwargs):
    return WideResNet(28, 10, num_classes, **kwargs)


@register_model(ModelConfig(num_features=640, head_hidden=256, head_out=16))
def wide_resnet34_10(num_classes=10, **kwargs):
    return WideResNet(34, 10, num_classes, **kwargs)
