"""The interface every classifier in the engine offers.

``forward_features(x) -> Tensor[N, D]`` (the penultimate features, after global average
pooling, where the paper reads them out) and ``forward_head(features) -> logits``.
Inputs are images in [0, 1]; the per-channel normalisation lives in the model.
"""
from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    num_features: int

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
