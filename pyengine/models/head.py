"""The contrastive projection head G of the paper (Section 3.2): Linear-BN-ReLU-Linear."""
from __future__ import annotations

from torch import nn


class ContrastiveHead(nn.Sequential):
    """G: features [N, in_features] -> contrastive embedding [N, out_features]."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )
        self.in_features, self.hidden, self.out_features = in_features, hidden, out_features
