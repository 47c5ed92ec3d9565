"""Gradient attacks written here: PGD (L-inf, L2; random start, restarts, EOT), FGSM, BIM,
C&W-L-inf as PGD on the margin loss, and the defense-aware attack of Eq. 8 (Mao et al.) /
Eq. 9 (SOAP).

They ascend with the purifier's own step rule (:class:`~pyengine.purify.ProjectedStep`
given the negated gradient), so attack and defense share one projection kernel. The
``model`` may be a plain classifier (static attack) or a defended model from
:mod:`.defended` (adaptive attack: BPDA, unrolled), which makes the attack adaptive.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..purify.steps import ProjectedStep
from ..random import Random
from .base import AUX_STREAM, LOSSES, Attack, derive, replay
from .checks import check_eot

LAMBDA_SWEEP = (0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)  # Table 6 of Mao et al.


def default_step_size(eps: float) -> float:
    """The papers' step: 2/255 for eps = 8/255 (L-inf), the same eps/4 ratio for L2."""
    return eps / 4


class PGD(Attack):
    """Projected gradient ascent (Madry et al., 2018) on ``loss`` of ``model(x)``.

    Args:
        model: ``x -> logits``; a defended model (:class:`DefendedModel`) makes it adaptive.
        eps, norm: the threat model ("linf" or "l2"); step_size: default eps / 4.
        steps: iterations; random_start: start uniformly in the ball (PGD) or at x (BIM).
        restarts: attempts; later ones attack only images not fooled yet.
        loss: "ce" (cross-entropy), "margin" (C&W: max_{j!=y} z_j - z_y) or
            ``callable(logits, y) -> Tensor[N]``.
        eot: gradients averaged per step over ``eot`` forward passes (Expectation over
            Transformation; useful when each forward of ``model`` draws fresh randomness).
        keep_best: return each image's first iterate that ``model`` misclassifies (judged on
            the logits already computed for the gradient) instead of the last iterate.
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, step_size: float | None = None,
                 steps: int = 10, norm: str = "linf", random_start: bool = True, restarts: int = 1,
                 loss: str | Callable = "ce", eot: int = 1, keep_best: bool = False, name: str | None = None):
        super().__init__(model, eps=eps, norm=norm, name=name or f"pgd{steps}")
        for arg, value in (("steps", steps), ("restarts", restarts), ("eot", eot)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        if isinstance(loss, str) and loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
        self.loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        self.steps, self.restarts, self.eot, self.keep_best = steps, restarts, eot, keep_best
        self.rule = ProjectedStep(self.eps, step_size or default_step_size(self.eps), norm=norm,
                                  random_start=random_start)
        if getattr(model, "method", None) == "none" and getattr(model, "is_defended_model", False):
            raise ValueError("PGD needs gradients through the defense; a DefendedModel has none: attack "
                             "BPDA, BPDAIterates or Unrolled (pyengine.attacks) instead")
        self.adaptive = bool(getattr(model, "is_defended_model", False) or hasattr(model, "purify"))
        check_eot(self)

    @property
    def step_size(self) -> float:
        return self.rule.step_size

    def _loss(self, x_adv: torch.Tensor, y: torch.Tensor, rng: Random) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss Tensor[N] to maximise, and the logits it came from."""
        logits = self.model(x_adv)
        return self.loss_fn(logits, y), logits

    def _gradient(self, x_adv: torch.Tensor, y: torch.Tensor, rng: Random) -> tuple[torch.Tensor, torch.Tensor]:
        grad, logits_sum = torch.zeros_like(x_adv), 0.0
        for _ in range(self.eot):
            x_in = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss, logits = self._loss(x_in, y, rng)
                g, = torch.autograd.grad(loss.sum(), x_in)
            grad += g
            logits_sum = logits_sum + logits.detach()
        return grad / self.eot, logits_sum / self.eot

    def _run(self, x: torch.Tensor, y: torch.Tensor, rng: Random) -> torch.Tensor:
        x0 = x.detach()
        x_adv = self.rule.start(x0, generator=rng)
        best = x_adv.clone() if self.keep_best else None
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            grad, logits = self._gradient(x_adv, y, rng)
            if self.keep_best:
                new = (logits.argmax(1) != y) & ~found
                best[new] = x_adv[new]
                found |= new
            self.rule.step(x_adv, -grad, x0)
        if self.keep_best:
            x_adv[found] = best[found]
        return x_adv


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al., 2015): one step of size eps from x."""

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, norm: str = "linf", loss="ce",
                 name: str | None = None):
        super().__init__(model, eps=eps, step_size=eps, steps=1, norm=norm, random_start=False,
                         loss=loss, name=name or "fgsm")


class BIM(PGD):
    """Basic iterative method (Kurakin et al., 2017): PGD without the random start."""

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, step_size: float | None = None,
                 steps: int = 10, norm: str = "linf", loss="ce", name: str | None = None, **kwargs):
        super().__init__(model, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=False,
                         loss=loss, name=name or f"bim{steps}", **kwargs)


def CWLinf(model: nn.Module, *, eps: float = 8 / 255, steps: int = 200, name: str | None = None, **kwargs) -> PGD:
    """C&W as the paper's code runs it: PGD on the margin loss max_{j!=y} z_j - z_y, L-inf."""
    return PGD(model, eps=eps, steps=steps, loss="margin", name=name or f"cw{steps}", **kwargs)


class DefenseAwarePGD(PGD):
    """Defense-aware PGD: maximise ``L_c(x_a, y) - lam * L_s(x_a)`` (Eq. 8 of Mao et al.).

    ``objective`` is any purifier objective (per-image ``L_s``, e.g. ``purifier.objective``),
    so SOAP's auxiliary-aware attack (Eq. 9, ``L_cls - beta * L_aux``) is the same code
    (negative values allowed). SOAP's code weighs batch means, so its beta is another scale:
    pass ``beta=`` (its Figure 5 axis) instead of ``lam`` for a SOAP objective, converted by
    :func:`pyengine.soap.beta_to_lam` (6.25 beta for RP, 10 beta for LC on CIFAR-10) once
    the class count and image shape are seen. ``lam = 0`` never evaluates ``L_s`` and equals
    :class:`PGD` exactly for the same generator. The views of ``L_s`` are drawn from the
    attacker's own stream, fresh at every step.
    """

    def __init__(self, classifier: nn.Module, objective: nn.Module, lam: float | None = None, *,
                 beta: float | None = None, eps: float = 8 / 255, steps: int = 50, name: str | None = None,
                 **kwargs):
        if (lam is None) == (beta is None):
            raise ValueError(f"DefenseAwarePGD takes lam (this package's scale) or beta (SOAP's), exactly one; "
                             f"got lam={lam!r}, beta={beta!r}")
        weight = lam if beta is None else beta
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
            raise ValueError(f"{'lam' if beta is None else 'beta'} must be a real number, got {weight!r}")
        if beta is not None and getattr(objective, "task", None) is None:
            raise ValueError(f"beta is SOAP's scale and needs a SOAP objective (with .task), got "
                             f"{type(objective).__name__}: pass lam")
        default = f"aware-pgd{steps}@{lam:g}" if beta is None else f"aware-pgd{steps}@beta={beta:g}"
        super().__init__(classifier, eps=eps, steps=steps, name=name or default, **kwargs)
        self.objective, self.beta = objective, None if beta is None else float(beta)
        self.lam = None if lam is None else float(lam)
        self.adaptive = True

    def _run(self, x, y, rng):
        self._aux = derive(rng, AUX_STREAM)
        return super()._run(x, y, rng)

    def _loss(self, x_adv, y, rng):
        loss, logits = super()._loss(x_adv, y, rng)
        if self.lam is None:
            from ..soap.objectives import beta_to_lam

            self.lam = beta_to_lam(self.beta, self.objective.task, n_classes=logits.shape[1],
                                   image_shape=tuple(x_adv.shape[1:]))
        if self.lam != 0:
            loss = loss - self.lam * self.objective(x_adv, generator=self._aux)
        return loss, logits


def defense_aware_sweep(classifier: nn.Module, objective: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        lams: Sequence[float] = LAMBDA_SWEEP, generator=None, **kwargs) -> dict[float, torch.Tensor]:
    """The lam sweep of Table 6 / Fig. 4: ``{lam: x_adv}``, every lam from the same draws.

    ``kwargs`` go to :class:`DefenseAwarePGD` (eps, steps, norm, ...). Evaluate each x_adv on
    the classifier (Baseline row) and on the purifier (Ours row).
    """
    fresh = replay(generator)
    return {float(lam): DefenseAwarePGD(classifier, objective, lam, **kwargs).perturb(x, y, generator=fresh())
            for lam in lams}
