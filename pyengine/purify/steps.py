"""Step rules: the start point and the projected descent step of Algorithm 1.

A step rule owns the geometry of the reverse attack (norm, radius eps_v, step size):
``start(x0)`` gives the first iterate and ``step(x, grad, x0)`` moves ``x`` in place
against ``grad`` and projects it onto the eps_v ball around ``x0`` and onto [0, 1].
"""
from __future__ import annotations

import torch

from ..ops import NORMS, projection_step_
from ..random import Random, as_random


class ProjectedStep:
    """Sign-gradient (``norm="linf"``) or normalised-gradient (``"l2"``) descent, projected."""

    def __init__(self, eps: float, step_size: float, *, norm: str = "linf", random_start: bool = True):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0 < eps <= (1 if norm == "linf" else 64):
            raise ValueError(f"eps must lie in (0, 1] for linf (pixel units) or (0, 64] for l2, got {eps}")
        if not 0 < step_size <= eps * 4:
            raise ValueError(f"step_size must lie in (0, 4*eps], got {step_size} with eps={eps}")
        self.eps, self.step_size, self.norm, self.random_start = eps, step_size, norm, random_start

    def start(self, x0: torch.Tensor, *, generator: "torch.Generator | Random | None" = None) -> torch.Tensor:
        """x0 plus uniform noise in the ball (Algorithm 1, line 4), or x0 itself."""
        if not self.random_start:
            return x0.clone()
        rng = as_random(generator)
        n, size = x0.shape[0], x0[0].numel()
        if self.norm == "l2":
            # A direction uniform on the sphere and a radius uniform in [0, eps].
            direction = rng.randn(n, size)
            radius = rng.rand(n, 1) * self.eps
            noise = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius
        else:
            noise = (rng.rand(n, size) * 2 - 1) * self.eps
        return (x0 + noise.view_as(x0).to(x0.device, x0.dtype)).clamp(0, 1)

    def step(self, x: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return projection_step_(x, grad, x0, self.step_size, self.eps, self.norm)

    def __repr__(self) -> str:
        return (f"ProjectedStep(norm={self.norm!r}, eps={self.eps:.5g}, step_size={self.step_size:.5g}, "
                f"random_start={self.random_start})")
