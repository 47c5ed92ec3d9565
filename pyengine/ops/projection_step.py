"""``projection_step``: one descent step of Algorithm 1 and its projection, in one pass.

L-inf: ``x' = clamp(clamp(x - a*sign(g), x0 - eps, x0 + eps), 0, 1)``.
L2: ``x' = clamp(x0 + P_eps(x - a*g/||g|| - x0), 0, 1)`` where ``P_eps`` scales a
perturbation onto the eps ball when it leaves it; norms are per image.
Descent on the loss whose gradient is ``g``: an attack passes ``-g`` to ascend.
"""
from __future__ import annotations

import torch

from ._extension import extension_loaded, use_fused

NORMS = ("linf", "l2")


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def projection_step_reference(x: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor,
                              step_size: float, eps: float, norm: str = "linf") -> torch.Tensor:
    """x, grad, x0: Tensor[N, ...] -> the stepped, projected Tensor[N, ...]."""
    if norm not in NORMS:
        raise ValueError(f"projection_step: norm must be one of {NORMS}, got {norm!r}")
    if norm == "linf":
        stepped = x - step_size * grad.sign()
        return torch.minimum(torch.maximum(stepped, x0 - eps), x0 + eps).clamp(0, 1)
    stepped = x - step_size * grad / _per_image_norm(grad)
    delta = stepped - x0
    delta = delta * (eps / _per_image_norm(delta)).clamp(max=1.0)
    return (x0 + delta).clamp(0, 1)


def projection_step(x: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor,
                    step_size: float, eps: float, norm: str = "linf") -> torch.Tensor:
    """Functional step (see module doc); differentiable in x and x0 for unrolled attacks."""
    if use_fused(x):
        return torch.ops.pyengine.projection_step(x, grad, x0, step_size, eps, norm)
    return projection_step_reference(x, grad, x0, step_size, eps, norm)


def projection_step_(x: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor,
                     step_size: float, eps: float, norm: str = "linf") -> torch.Tensor:
    """In-place :func:`projection_step` for the purifier's no-grad loop; returns ``x``."""
    if use_fused(x):
        torch.ops.pyengine.projection_step_(x, grad, x0, step_size, eps, norm)
        return x
    return x.copy_(projection_step_reference(x, grad, x0, step_size, eps, norm))


def _projection_step_fake(x, grad, x0, step_size, eps, norm):
    return x.new_empty(x.shape)


def _projection_step_inplace_fake(x, grad, x0, step_size, eps, norm):
    return None


def _projection_step_backward_fake(grad_out, x, grad, x0, step_size, eps, norm):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, grad, x0, step_size, eps, norm = inputs
    ctx.save_for_backward(x, grad, x0)
    ctx.args = (step_size, eps, norm)


def _backward(ctx, grad_out):
    # One C++ op serves both norms: L-inf is elementwise, L2 recomputes the two per-image
    # norms and the clamp masks from the saved inputs (no reference replay under autograd).
    x, grad, x0 = ctx.saved_tensors
    grad_x, grad_x0 = torch.ops.pyengine._projection_step_backward(grad_out, x, grad, x0, *ctx.args)
    needs_x, _, needs_x0 = ctx.needs_input_grad[:3]
    return grad_x if needs_x else None, None, grad_x0 if needs_x0 else None, None, None, None


if extension_loaded():
    torch.library.register_fake("pyengine::projection_step")(_projection_step_fake)
    torch.library.register_fake("pyengine::projection_step_")(_projection_step_inplace_fake)
    torch.library.register_fake("pyengine::_projection_step_backward")(_projection_step_backward_fake)
    torch.library.register_autograd("pyengine::projection_step", _backward, setup_context=_setup_context)
