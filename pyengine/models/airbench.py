"""A fast-converging CIFAR-10 network after Jordan's airbench94 (2024, "94% on CIFAR-10 in
3.29 seconds"), re-implemented for the engine's classifier interface.

A frozen 2x2 patch-whitening convolution (initialised from training images), then three
groups conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU (widths 64-256-256), a global
max pool and a bias-free linear layer whose logits are scaled by 1/9. Batch norms learn a
shift but no scale. 1.97 M parameters, 0.24 GFLOPs per 32x32 image: the "real model" a
CPU-only user can purify. With airbench's full recipe (lookahead averaging, test-time flips,
not implemented here) it reaches 94 % in 10 epochs; with the engine's training loop and the
recipe below, 90.4 % on the CIFAR-10 JPEG copy in 16 epochs (41-54 s each on 2 cores in
bf16 on an AMX CPU, docs/results/cpu/airbench94/train_log.txt).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier
from .registry import ModelConfig, register_model

# The recipe it was trained with (pyengine train-classifier fills these in for this
# architecture unless a flag says otherwise). Learning rate and weight decay are the
# airbench values converted from its summed loss at batch 1024 to a mean loss.
AIRBENCH_RECIPE = {
    "epochs": 16,
    "batch_size": 1024,
    "lr": 1.5,
    "momentum": 0.85,
    "weight_decay": 1.33e-3,
    "label_smoothing": 0.2,
    "bias_lr_scale": 64.0,
    "warmup_fraction": 0.23,
    "crop_padding": 2,
    "crop_pad_mode": "reflect",
}


class ConvGroup(nn.Module):
    def __init__(self, in_channels: int, channels: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels, momentum=bn_momentum)
        for conv in (self.conv1, self.conv2):
            # Identity on the first input channels: the group starts close to a pass-through.
            nn.init.dirac_(conv.weight.data[:conv.in_channels])
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(False)  # shift only: a scale before GELU adds nothing here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(ImageClassifier):
    """``x: Tensor[N, 3, 32, 32] in [0, 1]`` -> logits; features are the 256-d global max pool."""

    def __init__(self, widths=(64, 256, 256), num_classes: int = 10, *, mean, std,
                 bn_momentum: float = 0.4, whiten_width: int = 24):
        super().__init__(mean, std)
        # The whitening filters are data, not parameters: set by init_from_data, never trained.
        # Until then they are random like a fresh convolution's, so the input always matters.
        bound = 1 / 12 ** 0.5
        self.register_buffer("whiten_weight", torch.empty(whiten_width, 3, 2, 2).uniform_(-bound, bound))
        self.whiten_bias = nn.Parameter(torch.zeros(whiten_width))
        groups, in_channels = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(in_channels, width, bn_momentum))
            in_channels = width
        self.groups = nn.Sequential(*groups)
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes, bias=False)
        self.logit_scale = 1 / 9

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of ``images`` (Tensor[N, 3, H, W] in [0, 1]):
        the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), and their negatives."""
        x = self.normalize(images.float().to(self.whiten_weight.device))
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0).reshape(-1, 3, 2, 2)
        half = self.whiten_weight.shape[0] // 2
        self.whiten_weight.copy_(torch.cat([filters[:half], -filters[:half]]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(self.normalize(x), self.whiten_weight, self.whiten_bias)
        return self.groups(F.gelu(x)).amax(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features) * self.logit_scale


@register_model(ModelConfig(num_features=256, head_hidden=128, head_out=16,
                            notes="airbench94's network (Jordan 2024): 1.97 M parameters, "
                                  "90.4 % in 16 epochs here; trains on 2 CPU cores",
                            tags=("cpu",), train_recipe=AIRBENCH_RECIPE))
def airbench94(num_classes=10, **kwargs):
    return AirbenchNet((64, 256, 256), num_classes, **kwargs)
