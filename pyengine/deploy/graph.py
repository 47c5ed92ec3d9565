"""Purification as exportable modules: explicit input gradients, randomness as inputs.

``PurifyStep`` is one step of Algorithm 1 (Mao et al.): the input gradient of L_s,
lowered to forward ops (:mod:`.lowering`), then the projected step of
:func:`pyengine.ops.projection_step_reference`. ``PurifyClassify`` unrolls K steps from
the random start and classifies; ``PurifyOneStep`` is the step plus the logits of its
result, for a runtime that calls it K times. None of them calls autograd or draws a
random number, so ``torch.onnx.export`` sees an ordinary forward graph with static shapes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import projection_step_reference
from ..purify.purifier import Purifier
from .lowering import input_gradient, lower
from .objectives import ExportableObjective, exportable


class InputGradient(nn.Module):
    """grad(x, *randoms) = d (loss_scale * sum_n L_s(x)_n) / dx, as a traced forward graph
    (Tensor[N, 3, H, W], float32 whatever the objective computes in)."""

    def __init__(self, objective: ExportableObjective, n: int, h: int, w: int, loss_scale: float = 1.0):
        super().__init__()
        example = [torch.rand(n, 3, h, w)]
        example += [r for r in objective.draw(n, h, w, generator=torch.Generator().manual_seed(0))]
        self.loss_scale = loss_scale
        self.lowered = lower(input_gradient(objective.loss, loss_scale), example)

    def forward(self, x: torch.Tensor, *randoms: torch.Tensor) -> torch.Tensor:
        return self.lowered(x, *randoms)


class PurifyStep(nn.Module):
    """x_{k+1} = P(x_k - a * sign(grad L_s(x_k))) (L-inf; normalised gradient for L2), Tensor[N, 3, H, W]."""

    def __init__(self, gradient: InputGradient, eps: float, step_size: float, norm: str):
        super().__init__()
        self.gradient, self.eps, self.step_size, self.norm = gradient, eps, step_size, norm

    def forward(self, x0: torch.Tensor, xk: torch.Tensor, *randoms: torch.Tensor) -> torch.Tensor:
        return projection_step_reference(xk, self.gradient(xk, *randoms), x0, self.step_size, self.eps, self.norm)


class PurifyStepAtRadius(nn.Module):
    """forward(x0, xk, eps, *randoms): :class:`PurifyStep` with the radius an input (a 0-d
    Tensor), so one traced step serves every radius of SOAP's min-aux selection."""

    def __init__(self, gradient: InputGradient, step_size: float, norm: str):
        super().__init__()
        self.gradient, self.step_size, self.norm = gradient, step_size, norm

    def forward(self, x0: torch.Tensor, xk: torch.Tensor, eps: torch.Tensor, *randoms: torch.Tensor) -> torch.Tensor:
        return projection_step_reference(xk, self.gradient(xk, *randoms), x0, self.step_size, eps, self.norm)


class PurifyClassify(nn.Module):
    """forward(x, start_noise, *randoms) -> (logits Tensor[N, C], purified Tensor[N, 3, H, W]).

    ``start_noise``: Tensor[N, 3, H, W], the offset of the random start (the step rule's
    ``start`` draw, already scaled by eps; zeros for no random start). Each of ``randoms``
    carries a leading K axis: step k reads ``r[k]``.
    """

    def __init__(self, classifier: nn.Module, step: PurifyStep, steps: int):
        super().__init__()
        self.classifier, self.step, self.steps = classifier, step, steps

    def forward(self, x, start_noise, *randoms):
        xk = (x + start_noise).clamp(0, 1)
        for k in range(self.steps):
            xk = self.step(x, xk, *(r[k] for r in randoms))
        return self.classifier(xk), xk


class PurifyOneStep(nn.Module):
    """forward(x, x_k, *randoms) -> (logits of x_{k+1}, x_{k+1}); the runtime starts from
    ``clip(x + start_noise, 0, 1)`` and calls it K times, keeping the last logits.

    Classifying every step's result costs one classifier forward on N images against the
    step's forward and backward on V*N views (a few percent) and keeps one graph per model.
    """

    def __init__(self, classifier: nn.Module, step: PurifyStep):
        super().__init__()
        self.classifier, self.step = classifier, step

    def forward(self, x, xk, *randoms):
        nxt = self.step(x, xk, *randoms)
        return self.classifier(nxt), nxt


def build_modules(purifier: Purifier, batch: int, height: int, width: int, *, precision: str = "fp32",
                  loss_scale: float = 1.0):
    """(ExportableObjective, PurifyStep) for ``purifier`` at a fixed batch and image size;
    ``precision`` and ``loss_scale`` as :func:`pyengine.deploy.onnx_export.trace_purifier` takes them."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    objective = exportable(purifier.objective, precision=precision)
    objective.prepare(batch, height, width)
    step_rule = purifier.step
    gradient = InputGradient(objective, batch, height, width, loss_scale)
    return objective, PurifyStep(gradient, step_rule.eps, step_rule.step_size, step_rule.norm)
