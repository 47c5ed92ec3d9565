"""``contrastive_loss``: the InfoNCE loss of Eq. 4 (Mao et al.) per image.

z: Tensor[V*N, D] of projected features, view-major (row ``v*N + n`` is view v of image n).
For an anchor i, the positives are the other V-1 views of its image; the denominator
holds every candidate k != i: the image's own other views, the other images' views when
``batch_negatives`` is set (the paper's code), and the rows of ``bank`` (fixed negatives).
The loss of an anchor is the mean over its positives of ``-log softmax``; an image's loss
is the mean over its V anchors. Cosine similarities are divided by ``temperature``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._extension import extension_loaded, use_fused


def contrastive_loss_reference(z: torch.Tensor, n_views: int, temperature: float,
                               bank: torch.Tensor | None = None, batch_negatives: bool = False) -> torch.Tensor:
    """-> Tensor[N]: per-image loss, computed in fp32 (fp64 for fp64 input)."""
    ct = torch.float64 if z.dtype == torch.float64 else torch.float32
    m = z.shape[0]
    n = m // n_views
    zn = F.normalize(z.to(ct), dim=1)
    sim = zn @ zn.T / temperature
    image = torch.arange(m, device=z.device) % n
    same = image[:, None] == image[None, :]
    not_self = ~torch.eye(m, dtype=torch.bool, device=z.device)
    positive = same & not_self
    candidate = not_self if batch_negatives else positive
    logits = sim.masked_fill(~candidate, float("-inf"))
    if bank is not None:
        logits = torch.cat([logits, zn @ F.normalize(bank.to(ct), dim=1).T / temperature], dim=1)
    log_z = torch.logsumexp(logits, dim=1)
    anchor_loss = log_z - (sim * positive).sum(1) / (n_views - 1)
    return anchor_loss.view(n_views, n).mean(0)


def contrastive_loss(z: torch.Tensor, n_views: int, temperature: float,
                     bank: torch.Tensor | None = None, batch_negatives: bool = False) -> torch.Tensor:
    """z: Tensor[V*N, D] -> per-image loss Tensor[N] (see module doc); differentiable in z."""
    if use_fused(z):
        return torch.ops.pyengine.contrastive_loss(z, n_views, temperature, bank, batch_negatives)
    return contrastive_loss_reference(z, n_views, temperature, bank, batch_negatives)


def _contrastive_loss_fake(z, n_views, temperature, bank, batch_negatives):
    return z.new_empty((z.shape[0] // n_views,), dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)


def _contrastive_loss_backward_fake(grad, z, n_views, temperature, bank, batch_negatives):
    return z.new_empty(z.shape)


def _setup_context(ctx, inputs, output):
    z, n_views, temperature, bank, batch_negatives = inputs
    ctx.save_for_backward(z, bank)
    ctx.args = (n_views, temperature, batch_negatives)


def _backward(ctx, grad):
    z, bank = ctx.saved_tensors
    n_views, temperature, batch_negatives = ctx.args
    if torch.is_grad_enabled():
        # create_graph (second-order attacks through an L2 purifier): the fused backward op has
        # no derivative of its own, so the differentiable reference recomputes the gradient.
        with torch.enable_grad():
            loss = contrastive_loss_reference(z, n_views, temperature, bank, batch_negatives)
            grad_z, = torch.autograd.grad(loss, z, grad.to(loss.dtype), create_graph=True)
    else:
        grad_z = torch.ops.pyengine._contrastive_loss_backward(grad, z, n_views, temperature, bank, batch_negatives)
    return grad_z, None, None, None, None  # the bank holds fixed negatives: no gradient


if extension_loaded():
    torch.library.register_fake("pyengine::contrastive_loss")(_contrastive_loss_fake)
    torch.library.register_fake("pyengine::_contrastive_loss_backward")(_contrastive_loss_backward_fake)
    torch.library.register_autograd("pyengine::contrastive_loss", _backward, setup_context=_setup_context)
