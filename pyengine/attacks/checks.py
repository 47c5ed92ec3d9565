"""Warnings for evaluation mistakes, as AutoAttack's checks raise them.

- :func:`check_eot`: an attack on a randomized defense (random start or random views)
  that neither averages over draws (EOT) nor shares the defender's draws;
- :func:`check_gradients`: gradients that are NaN/inf or all zero through the attacked
  model on a probe batch (a broken or obfuscated backward pass);
- :func:`compare_with_transfer`: an adaptive attack weaker than transfer from the static
  model on the same images (the adaptive attack is then not working as intended).

Each warns with :class:`EvaluationWarning` and returns what it measured, so a runner can
also record it.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn

from .base import LOSSES, bind, check_labels
from ..purify.purifier import check_images


class EvaluationWarning(UserWarning):
    """The evaluation as configured may overestimate robustness."""


def is_randomized(purifier) -> bool:
    """True when purification draws randomness: a random start or random views in L_s."""
    rule = getattr(purifier, "step", None)
    objective = getattr(purifier, "objective", None)
    explicit = getattr(objective, "randomized", None)
    if explicit is not None:
        return bool(explicit) or bool(getattr(rule, "random_start", False))
    return bool(getattr(rule, "random_start", False)) or getattr(objective, "views", None) is not None


def check_eot(attack) -> bool:
    """Warn when ``attack`` targets a randomized defense without EOT; returns True if it warned.

    Fine: ``randomness="shared"`` (deterministic evaluation, the defender's own draws) or
    ``randomness="fresh"`` with ``eot > 1``. A mistake: fresh draws with ``eot == 1``, or
    a gradient attack aimed at the Purifier module itself (no gradient through purify).
    """
    model = getattr(attack, "model", None)
    eot = int(getattr(attack, "eot", 1))
    name = getattr(attack, "name", type(attack).__name__)
    if hasattr(model, "purify") and is_randomized(model):
        warnings.warn(f"attack {name!r} targets a Purifier directly: its forward is randomized and has no "
                      "gradient through the purification; wrap it in BPDA, BPDAIterates or Unrolled "
                      "(pyengine.attacks) and use EOT or shared draws", EvaluationWarning, stacklevel=3)
        return True
    if getattr(model, "is_defended_model", False) and is_randomized(model.purifier):
        if model.randomness == "fresh" and eot <= 1:
            warnings.warn(f"attack {name!r} targets a randomized defense (random start / random views) with "
                          "fresh draws and no EOT: each gradient sees one random draw; average over draws "
                          "(eot=20, as AutoAttack's 'rand' version) or use randomness='shared' for a "
                          "deterministic evaluation", EvaluationWarning, stacklevel=3)
            return True
    return False


class GradientReport(NamedTuple):
    nonfinite: float  # fraction of images whose gradient has a NaN or inf
    zero: float  # fraction of images whose gradient is exactly zero everywhere
    mean_norm: float  # mean L2 norm of the finite gradients


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str = "ce",
                    generator=None) -> GradientReport:
    """Gradient of ``loss(model(x), y)`` w.r.t. x on a probe batch; warns on NaN/inf or all-zero.

    ``model`` is whatever an attack differentiates (a classifier, BPDA/Unrolled, ...);
    ``generator`` binds a defended model's draws as an attack would.
    """
    check_images(x)
    y = check_labels(y, x)
    x_in = x.detach().clone().requires_grad_(True)
    with bind(model, generator), torch.enable_grad():
        value = LOSSES[loss](model(x_in), y).sum()
        if value.requires_grad:
            grad, = torch.autograd.grad(value, x_in, allow_unused=True)
        else:
            grad = None
    if grad is None:
        grad = torch.zeros_like(x_in)
    flat = grad.detach().flatten(1)
    finite = torch.isfinite(flat).all(1)
    zero = finite & (flat == 0).all(1)
    report = GradientReport(float((~finite).float().mean()), float(zero.float().mean()),
                            float(flat[finite].norm(dim=1).mean()) if finite.any() else float("nan"))
    name = type(model).__name__
    if report.nonfinite > 0:
        warnings.warn(f"gradients through {name} are NaN or inf for {report.nonfinite:.0%} of the probe images: "
                      "gradient attacks on it are meaningless there (a broken backward pass or gradient "
                      "masking); fix the backward or use BPDA", EvaluationWarning, stacklevel=2)
    if report.zero > 0:
        warnings.warn(f"gradients through {name} vanish (all zero) for {report.zero:.0%} of the probe images: "
                      "gradient attacks cannot move them (obfuscated gradients?); use BPDA / Unrolled or a "
                      "gradient-free attack (Square)", EvaluationWarning, stacklevel=2)
    return report


def compare_with_transfer(adaptive: torch.Tensor, transfer: torch.Tensor, *, name: str = "adaptive",
                          transfer_name: str = "transfer", tolerance: float = 0.0) -> float:
    """Warn when the adaptive attack leaves more images robust than transfer does.

    adaptive, transfer: Tensor[N] bool, per-image "still robust" flags on the same images
    against the same defended model. Returns ``acc(adaptive) - acc(transfer)``.
    """
    if adaptive.shape != transfer.shape or adaptive.dim() != 1:
        raise ValueError(f"robust flags must be 1-D and of the same shape, got {tuple(adaptive.shape)} "
                         f"and {tuple(transfer.shape)}")
    adaptive, transfer = adaptive.bool().cpu(), transfer.bool().cpu()
    gap = float(adaptive.float().mean() - transfer.float().mean())
    if gap > tolerance:
        missed = int((adaptive & ~transfer).sum())
        warnings.warn(f"adaptive attack {name!r} is weaker than {transfer_name!r} from the static model: robust "
                      f"accuracy {adaptive.float().mean():.2%} vs {transfer.float().mean():.2%} ({missed} images "
                      "fooled by transfer survive the adaptive attack); the adaptive attack is not working as "
                      "intended (report the per-image worst case)", EvaluationWarning, stacklevel=2)
    return gap
