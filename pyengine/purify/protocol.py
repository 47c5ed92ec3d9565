"""What a purifier is, for the code that runs one: the contract :class:`~pyengine.purify.Purifier`
(Mao et al.'s Algorithm 1) and SOAP's :class:`~pyengine.soap.MinAuxPurifier` both keep.

The evaluation runner, the attacks through the defence, the batch ``purify`` job, the demo
and the ONNX exporter use only these members; :func:`pyengine.load_purifier` returns one.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .purifier import PurifyResult
from .steps import ProjectedStep


@runtime_checkable
class PurifierLike(Protocol):
    classifier: nn.Module  # forward(x) -> logits, on images in [0, 1]
    objective: nn.Module  # the self-supervised loss L_s (or L_aux) per image, x -> Tensor[N]
    step: ProjectedStep  # the step rule (for min-aux, that of its largest radius)
    steps: int  # K (contrastive) or T (SOAP)
    image_size: tuple[int, int] | None  # (H, W) accepted; None: any
    manifest: dict | None  # the checkpoint's manifest, for one built from a checkpoint

    def purify(self, x: torch.Tensor, *, generator=None, return_trace: bool = False,
               on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor | PurifyResult:
        """x: Tensor[N, 3, H, W] in [0, 1] -> purified images (a PurifyResult with the loss trace when asked)."""

    def loss(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        """The purification loss per image, Tensor[N], without gradient."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the purified input."""

    def eval(self) -> "PurifierLike":
        ...

    def to(self, *args, **kwargs) -> "PurifierLike":
        ...
