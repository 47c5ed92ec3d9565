"""Auxiliary heads h of SOAP (Shi et al., ICLR 2021), reading the classifier's shared features z.

Both heads read ``z = classifier.forward_features(x)``: Tensor[N, D], the representation
the classification layer g reads too (Section 3.2: h(z; theta_aux) shares z with
g(z; theta_cls)). Label consistency needs no head of its own (h = g, Eq. 8).

Each head reports its sizes as data (:meth:`sizes`), which checkpoints store in their
manifest so :func:`build_aux_head` can rebuild it before loading the weights.
"""
from __future__ import annotations

import torch
from torch import nn

AUX_TASKS = ("rotation", "consistency", "reconstruction")


class RotationHead(nn.Linear):
    """h of rotation prediction (Eq. 7): a linear classifier z [N, D] -> rotation logits [N, 4]."""

    def __init__(self, in_features: int, num_rotations: int = 4):
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"RotationHead: in_features must be a positive int, got {in_features!r}")
        if num_rotations != 4:
            raise ValueError(f"RotationHead: num_rotations must be 4 (0, 90, 180, 270 degrees), got {num_rotations!r}")
        super().__init__(in_features, num_rotations)
        self.num_rotations = num_rotations

    def sizes(self) -> dict:
        return {"task": "rotation", "in_features": self.in_features, "num_rotations": self.num_rotations}


class ReconstructionDecoder(nn.Module):
    """h of data reconstruction (Eq. 6): z [N, D] -> image [N, channels, S, S] in (0, 1).

    As the paper's convolutional decoder (a linear layer to a small feature map, then
    transposed convolutions, sigmoid output), sized for 32x32 inputs: Linear(D, 2w*4*4),
    then three stride-2 transposed convolutions 2w -> w -> w/2 -> channels (4x4 -> 32x32).
    With D = 128 and w = 32 it has about 0.2 M parameters.
    """

    def __init__(self, in_features: int, width: int = 32, image_size: int = 32, channels: int = 3):
        super().__init__()
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"ReconstructionDecoder: in_features must be a positive int, got {in_features!r}")
        if not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"ReconstructionDecoder: width must be an even int >= 2, got {width!r}")
        if not isinstance(image_size, int) or image_size < 8 or image_size % 8:
            raise ValueError(f"ReconstructionDecoder: image_size must be a multiple of 8, got {image_size!r}")
        self.in_features, self.width, self.image_size, self.channels = in_features, width, image_size, channels
        self.base = image_size // 8
        self.fc = nn.Linear(in_features, 2 * width * self.base * self.base)
        self.up = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, channels, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(z).view(z.shape[0], 2 * self.width, self.base, self.base))

    def sizes(self) -> dict:
        return {"task": "reconstruction", "in_features": self.in_features, "width": self.width,
                "image_size": self.image_size, "channels": self.channels}


def build_aux_head(task: str, in_features: int, **sizes) -> nn.Module | None:
    """The head ``task`` needs, for a classifier with ``in_features`` features (None for consistency)."""
    if task == "rotation":
        return RotationHead(in_features, **sizes)
    if task == "reconstruction":
        return ReconstructionDecoder(in_features, **sizes)
    if task == "consistency":
        if sizes:
            raise ValueError(f"the consistency task has no head; got sizes {sizes}")
        return None
    raise ValueError(f"unknown auxiliary task {task!r}; expected one of {', '.join(AUX_TASKS)}")
