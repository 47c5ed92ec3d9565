"""Projected gradient descent (Madry et al., 2018) on the cross-entropy, L-inf or L2.

It ascends with the purifier's own step rule (``ProjectedStep`` given the negated
gradient), so attack and defense share one projection kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..purify.purifier import check_images
from ..purify.steps import ProjectedStep


class PGD:
    """``PGD(model, eps, step_size, steps).perturb(x, y) -> x_adv`` with ``||x_adv - x|| <= eps``."""

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 10, norm: str = "linf", random_start: bool = True):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.model, self.steps = model, steps
        self.rule = ProjectedStep(eps, step_size, norm=norm, random_start=random_start)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(x)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
        x0 = x.detach()
        x_adv = self.rule.start(x0, generator=generator)
        with torch.enable_grad():
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = F.cross_entropy(self.model(x_adv), y, reduction="sum")
                grad, = torch.autograd.grad(loss, x_adv)
                x_adv = x_adv.detach()
                self.rule.step(x_adv, -grad, x0)
        return x_adv
