"""A faithful re-implementation of the published reverse-attack loop, the speed baseline.

What makes it the published loop (Mao et al.'s released code), as opposed to the engine:
one augmentation draw shared by the whole batch (torchvision transforms applied to the
batch tensor), fp32 eager, a fresh autograd graph each step, ``loss.backward()`` that also
fills the model weights' ``.grad`` (the parameters keep ``requires_grad``), negatives from
the other images of the batch, 4 views, the plain pure-PyTorch ops.
"""
from __future__ import annotations

import torch
from torch import nn

from pyengine.ops import contrastive_loss_reference, sample_views_reference
from pyengine.purify import ViewSampler


def published_purify(classifier: nn.Module, head: nn.Module, x: torch.Tensor, *, steps: int = 40,
                     eps: float = 16 / 255, step_size: float = 2 / 255, n_views: int = 4,
                     temperature: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: Tensor[N, 3, H, W] in [0, 1] -> purified Tensor[N, 3, H, W] (L-inf, random start)."""
    for module in (classifier, head):
        module.eval().requires_grad_(True)
    n, _, h, w = x.shape
    sampler = ViewSampler(n_views=n_views, shared_across_batch=True)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    for _ in range(steps):
        x_pur = (x + delta).clamp(0, 1).detach().requires_grad_(True)
        views = sample_views_reference(x_pur, sampler.draw(n, h, w, generator=generator).to(x.device), h, w)
        z = head(classifier.forward_features(views))
        loss = contrastive_loss_reference(z, n_views, temperature, batch_negatives=True).mean()
        classifier.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        loss.backward()
        delta = (delta - step_size * x_pur.grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
