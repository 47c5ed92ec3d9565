"""Pre-activation ResNets (He et al., 2016) for 32x32 inputs, as used by Rice et al.'s RO models."""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from .base import ImageClassifier
from .registry import ModelConfig, register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
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
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ImageClassifier):
    """Pre-activation residual stages; the first block of every stage but the first halves
    the resolution. ``stem_width`` defaults to the first stage's width (Wide ResNets use 16)."""

    def __init__(self, blocks_per_stage, widths, num_classes=10, *, mean, std, stem_width=None):
        super().__init__(mean, std)
        stem_width = stem_width or widths[0]
        self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        layers, in_planes = [], stem_width
        for stage, (blocks, planes) in enumerate(zip(blocks_per_stage, widths)):
            for i in range(blocks):
                layers.append(PreActBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x):
        out = self.layers(self.conv1(self.normalize(x)))
        return F.relu(self.bn(out)).mean(dim=(2, 3))


@register_model(ModelConfig(num_features=512, head_hidden=128, head_out=8,
                            notes="PreAct-ResNet-18; head sizes as the paper's code"))
def preact_resnet18(num_classes=10, **kwargs):
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, **kwargs)


@register_model(ModelConfig(num_features=256, head_hidden=128, head_out=8,
                            notes="PreAct-ResNet-18 at half width (2.8 M parameters): its fp32 checkpoint, "
                                  "11 MB, fits the repository's 16 MiB limit, and it trains 4x faster"))
def preact_resnet18_half(num_classes=10, **kwargs):
    return PreActResNet((2, 2, 2, 2), (32, 64, 128, 256), num_classes, **kwargs)


@register_model(ModelConfig(num_features=128, head_hidden=64, head_out=16,
                            notes="one block per stage, widths 32-64-128: fast enough for 2 CPU cores",
                            tags=("cpu",)))
def preact_resnet_tiny(num_classes=10, **kwargs):
    return PreActResNet((1, 1, 1), (32, 64, 128), num_classes, **kwargs)
