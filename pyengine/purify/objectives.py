"""Self-supervised objectives L_s that the purifier minimises.

An objective is an ``nn.Module`` mapping images ``x: Tensor[N, 3, H, W]`` in [0, 1] to a
per-image loss ``Tensor[N]``, differentiable in ``x``; it takes an optional
``torch.Generator`` for its random draws. Summing the per-image losses keeps every image's
gradient its own, so the purifier treats images independently unless the objective ties
them together (the paper's batch negatives).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import contrastive_loss
from .views import ViewSampler

NEGATIVES = ("bank", "batch")


class ContrastiveObjective(nn.Module):
    """L_s of Eq. 4 (Mao et al.): InfoNCE over ``views.n_views`` augmented views per image.

    Features are the classifier's penultimate features passed through the head G.
    ``negatives="bank"`` (default) contrasts each image's views with a fixed bank of
    clean-image view embeddings, computed once per model (:meth:`build_bank`): the loss of
    an image then depends on that image alone, and a batch of one works. ``"batch"``
    reproduces the paper's code: the negatives are the views of the other images in the
    batch, so predictions depend on the batch-mates and a batch of one cannot be purified.
    """

    def __init__(self, classifier: nn.Module, head: nn.Module, views: ViewSampler | None = None, *,
                 temperature: float = 0.2, negatives: str = "bank", bank: torch.Tensor | None = None):
        super().__init__()
        if not hasattr(classifier, "forward_features"):
            raise TypeError("classifier must offer forward_features(x) -> Tensor[N, D]; wrap a plain "
                            "nn.Module with pyengine.models.HookedFeatures(model, layer=...)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        num_features = getattr(classifier, "num_features", None)
        in_features = getattr(head, "in_features", None)
        if num_features is not None and in_features is not None and num_features != in_features:
            raise ValueError(f"head expects {in_features} input features but the classifier gives "
                             f"{num_features}: the head was trained for another backbone")
        self.classifier, self.head = classifier, head
        self.views = views or ViewSampler()
        self.temperature, self.negatives = temperature, negatives
        self.register_buffer("bank", None if bank is None else bank.detach().float())

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier.forward_features(views))

    @torch.no_grad()
    def build_bank(self, clean: torch.Tensor, *, generator: torch.Generator | None = None,
                   batch_size: int = 256) -> torch.Tensor:
        """Embed ``views.n_views`` views of each clean image as the fixed negative bank."""
        parts = [self.embed(self.views(chunk, generator=generator)) for chunk in clean.split(batch_size)]
        self.bank = torch.cat(parts).float()
        return self.bank

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.negatives == "bank" and self.bank is None:
            raise ValueError("the bank of negatives is empty: load a checkpoint that carries one "
                             "(train-head writes it) or call build_bank(clean_images)")
        if self.negatives == "batch" and x.shape[0] < 2:
            raise ValueError("negatives='batch' needs at least 2 images per batch (the other images "
                             "are the negatives); use the default negatives='bank' for single images")
        z = self.embed(self.views(x, generator=generator))
        bank = self.bank.to(z.device) if self.negatives == "bank" else None
        return contrastive_loss(z, self.views.n_views, self.temperature, bank,
                                batch_negatives=self.negatives == "batch")
