"""Per-image early exit: stop an image's descent once its L_s has stopped falling.

The rule (:class:`EarlyExit`): after step k (k > ``window``), an image stops when the
running minimum of its L_s fell by less than ``tolerance`` over the last ``window`` steps,
i.e. ``min(L_1..L_{k-window}) - min(L_1..L_k) < tolerance``, with L_j the loss measured in
step j (at the iterate before it). That fall is never negative, so ``tolerance=0`` never
stops an image, and a huge tolerance stops every image after ``window + 1`` steps. L_s is
measured on fresh random views each step, hence the running minimum rather than the last
value: one noisy step neither stops nor keeps an image going.

The eager loop then purifies only the images still active (a smaller batch each time some
stop). Every step still draws the views of the whole batch and hands each active image its
own, so an image that never stops follows exactly the trajectory of the full loop. That
needs images that do not depend on each other: bank negatives, not batch negatives. The
captured CUDA-graph loop has a fixed shape and always runs all K steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class EarlyExit:
    """Stop an image when its running-minimum L_s fell by less than ``tolerance`` (nats) over
    the last ``window`` steps (see the module docstring)."""

    tolerance: float
    window: int = 5

    def __post_init__(self):
        if not isinstance(self.tolerance, (int, float)) or not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"early exit tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"early exit window must be an integer >= 1, got {self.window!r}")

    def stopped(self, trace: torch.Tensor) -> torch.Tensor:
        """trace: Tensor[k, n], the losses of steps 1..k -> Tensor[n] bool, the images to stop."""
        k = trace.shape[0]
        if k <= self.window:
            return torch.zeros(trace.shape[1], dtype=torch.bool, device=trace.device)
        fall = trace[:k - self.window].amin(0) - trace.amin(0)
        return fall < self.tolerance


def select_views(draws: torch.Tensor, active: torch.Tensor, n: int) -> torch.Tensor:
    """draws: Tensor[V * n, P] (view-major) -> the rows of the images ``active``, Tensor[V * len(active), P]."""
    return draws.view(-1, n, draws.shape[-1])[:, active].reshape(-1, draws.shape[-1])


def descend_with_early_exit(step: Callable, draw: Callable, xk: torch.Tensor, x0: torch.Tensor, steps: int,
                            rule: EarlyExit) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``steps`` steps of ``step(xk, x0, draws) -> L_s`` (moving ``xk`` in place), each
    with ``draw()`` -> the whole batch's views, an image leaving the batch once ``rule``
    stops it. -> (L_s trace Tensor[steps, N], a stopped image's entries repeating its last
    measured value; the steps each image took, Tensor[N] int64)."""
    n = x0.shape[0]
    trace = x0.new_zeros(steps, n, dtype=torch.float32)
    taken = torch.zeros(n, dtype=torch.int64)
    active = torch.arange(n, device=x0.device)
    for k in range(steps):
        draws = draw()
        if len(active) == n:
            loss = step(xk, x0, draws)
        else:
            part = xk[active]
            loss = step(part, x0[active], select_views(draws, active, n))
            xk[active] = part
        if k:
            trace[k] = trace[k - 1]
        trace[k, active] = loss.float()
        taken[active.cpu()] += 1
        active = active[~rule.stopped(trace[:k + 1, active])]
        if len(active) == 0:
            trace[k + 1:] = trace[k]
            break
    return trace, taken
