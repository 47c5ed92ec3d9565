"""Self-supervised objectives L_s that the purifier minimises.

An objective is an ``nn.Module`` mapping images ``x: Tensor[N, 3, H, W]`` in [0, 1] to a
per-image loss ``Tensor[N]``, differentiable in ``x``; it takes an optional
``torch.Generator`` for its random draws. Summing the per-image losses keeps every image's
gradient its own, so the purifier treats images independently unless the objective ties
them together (the paper's batch negatives).

An objective that also offers ``draw(x, generator=, steps=)`` and ``forward(x, draws=)``
separates its randomness from its computation, which lets the purifier capture its K-step
loop as one CUDA graph with the draws as graph inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NonFiniteError
from ..ops import contrastive_loss
from .views import ViewSampler

NEGATIVES = ("bank", "batch")


def _check_bank(bank: torch.Tensor, width: int | None) -> None:
    """A bank of negatives must be a finite Tensor[M, D] with D the head's output width: a NaN
    bank turns every loss into NaN and purification into a no-op."""
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or bank.shape[0] < 1:
        raise ValueError(f"bank must be a Tensor[M, D] with M >= 1, got {getattr(bank, 'shape', type(bank).__name__)}")
    if width is not None and bank.shape[1] != width:
        raise ValueError(f"bank holds {bank.shape[1]}-dimensional embeddings but the head gives {width}")
    if not bool(torch.isfinite(bank).all()):
        raise NonFiniteError("the bank of negatives holds NaN or inf: rebuild it (build_bank) or retrain the head")


class ContrastiveObjective(nn.Module):
    """L_s of Eq. 4 (Mao et al.): InfoNCE over ``views.n_views`` augmented views per image.

    Features are the classifier's penultimate features passed through the head G.
    ``negatives="bank"`` (default) contrasts each image's views with a fixed bank of
    clean-image view embeddings, computed once per model (:meth:`build_bank`): the loss of
    an image then depends on that image alone, and a batch of one works. ``"batch"``
    reproduces the paper's code: the negatives are the views of the other images in the
    batch, so predictions depend on the batch-mates and a batch of one cannot be purified.

    Under ``torch.autocast`` the views are rendered in the autocast dtype and the loss is
    still computed in fp32. ``channels_last`` renders the views in NHWC, the layout cuDNN's
    tensor-core convolutions prefer (the purifier sets it for a channels_last backbone).
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
        self.channels_last = False
        self._compiled_features = None
        self.compiled_batches: set[int] | None = None  # image batch sizes run compiled (None: all)
        if bank is not None:
            _check_bank(bank, getattr(head, "out_features", None))
        self.register_buffer("bank", None if bank is None else bank.detach().float())

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        features = self.classifier.forward_features
        if self._compiled_features is not None and (
                self.compiled_batches is None or views.shape[0] // self.views.n_views in self.compiled_batches):
            features = self._compiled_features
        return self.head(features(views))

    def compile_backbone(self, backend: str = "inductor") -> None:
        """Run the classifier's ``forward_features`` through ``torch.compile`` from now on
        (a no-op once compiled).

        Inductor fuses the batch-norm/ReLU chains of forward and input-gradient backward, the
        bulk of a purification step's memory traffic; it compiles once per input shape.
        ``compiled_batches`` (a set of image batch sizes; None: every size) limits it to the
        shapes worth compiling (the purifier's warmed-up sizes), the others run eagerly.
        """
        if self._compiled_features is None:
            self._compiled_features = torch.compile(self.classifier.forward_features, backend=backend, dynamic=False)

    @torch.no_grad()
    def build_bank(self, clean: torch.Tensor, *, generator: torch.Generator | None = None,
                   batch_size: int = 256) -> torch.Tensor:
        """Embed ``views.n_views`` views of each clean image as the fixed negative bank."""
        parts = [self.embed(self.views(chunk, generator=generator)) for chunk in clean.split(batch_size)]
        bank = torch.cat(parts).float()
        _check_bank(bank, getattr(self.head, "out_features", None))
        self.bank = bank
        return self.bank

    def draw(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
             steps: int | None = None) -> torch.Tensor:
        """The view parameters of one call, [V*N, P], or of ``steps`` calls, [steps, V*N, P], on x's device."""
        n, _, h, w = x.shape
        return self.views.draw(n, h, w, generator=generator, steps=steps).to(x.device)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
                draws: torch.Tensor | None = None) -> torch.Tensor:
        if self.negatives == "bank" and self.bank is None:
            raise ValueError("the bank of negatives is empty: load a checkpoint that carries one "
                             "(train-head writes it) or call build_bank(clean_images)")
        if self.negatives == "batch" and x.shape[0] < 2:
            raise ValueError("negatives='batch' needs at least 2 images per batch (the other images "
                             "are the negatives); use the default negatives='bank' for single images")
        if draws is None:
            draws = self.draw(x, generator=generator)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        z = self.embed(self.views(x, draws, out_dtype=dtype, channels_last=self.channels_last))
        bank = self.bank.to(z.device) if self.negatives == "bank" else None
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # the loss in fp32 (or fp64) under autocast
        return contrastive_loss(z, self.views.n_views, self.temperature, bank,
                                batch_negatives=self.negatives == "batch")
