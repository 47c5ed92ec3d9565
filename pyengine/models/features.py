"""Read features out of any classifier, so a user's own model can be defended.

:class:`HookedFeatures` wraps an ``nn.Module`` and offers the interface of
:class:`~pyengine.models.base.ImageClassifier`: ``forward_features(x) -> Tensor[N, D]`` from
the output of one named layer (global-average-pooled when it is a feature map, as the
paper reads the penultimate features) and ``forward(x) -> logits``.
"""
from __future__ import annotations

import difflib
import threading
from typing import Sequence

import torch
from torch import nn


class HookedFeatures(nn.Module):
    """Features of ``model`` read from the output of its submodule ``layer``.

    Args:
        model: any classifier mapping images to logits [N, num_classes].
        layer: a name from ``model.named_modules()``, e.g. ``"layer4"`` or ``"features.7"``.
        read: ``"output"`` (default) reads the layer's output; ``"input"`` its first input,
            e.g. the pooled features entering the final ``nn.Linear`` classifier.
        mean, std: per-channel normalisation the model expects; when given, inputs in [0, 1]
            are mapped to ``(x - mean) / std`` before the model. Give both or neither.

    ``num_features`` is ``None`` until the first forward pass reveals D.

    The layer's output is captured by a forward hook that exists only for the duration
    of one call and only listens to the calling thread, so concurrent calls and repeated
    calls never see each other's tensors and no activation outlives its call. The output
    is cloned when captured, because later in-place ops of the model (``ReLU(inplace=True)``)
    would otherwise rewrite it. If the layer runs several times in one pass, its last
    output is used.
    """

    def __init__(self, model: nn.Module, layer: str, *, mean: Sequence[float] | torch.Tensor | None = None,
                 std: Sequence[float] | torch.Tensor | None = None, read: str = "output"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"HookedFeatures: model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(layer, str):
            raise TypeError(f"HookedFeatures: layer must be a str, got {type(layer).__name__}")
        names = [name for name, _ in model.named_modules(remove_duplicate=False)]
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"HookedFeatures: unknown layer {layer!r}{hint} "
                             f"({type(model).__name__} has {len(names)} named modules; "
                             "see model.named_modules())")
        if read not in ("output", "input"):
            raise ValueError(f"HookedFeatures: read must be 'output' or 'input', got {read!r}")
        self.model = model
        self.layer, self.read = layer, read
        self.num_features: int | None = None
        if (mean is None) != (std is None):
            raise ValueError("HookedFeatures: give both mean and std, or neither "
                             f"(got mean={mean!r}, std={std!r})")
        if mean is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
            std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
            if mean_t.numel() != std_t.numel():
                raise ValueError(f"HookedFeatures: mean and std must have one value per channel, "
                                 f"got {mean_t.numel()} and {std_t.numel()}")
            if not bool((std_t > 0).all()):
                raise ValueError(f"HookedFeatures: std must be > 0, got {std_t.tolist()}")
            mean_t, std_t = mean_t.view(1, -1, 1, 1), std_t.view(1, -1, 1, 1)
        else:
            mean_t = std_t = None
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"HookedFeatures: x must be [N, {self.mean.shape[1]}, H, W] to match mean/std, "
                             f"got {list(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: Tensor[N, C, H, W] in [0, 1] -> logits of the wrapped model."""
        return self.model(self.normalize(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: Tensor[N, C, H, W] in [0, 1] -> features Tensor[N, D], differentiable in x.

        A 4-D output [N, C, h, w] is averaged over (h, w), so D = C; any other output is
        flattened to [N, -1].
        """
        return self._features_and_logits(x)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"HookedFeatures cannot map features of layer {self.layer!r} to logits; call forward(x)")

    def _features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        caller = threading.get_ident()

        def hook(module, inputs, output):
            if threading.get_ident() != caller:
                return  # another thread's forward through the same module
            if self.read == "input":
                output = inputs[0] if inputs else None
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"HookedFeatures: layer {self.layer!r} {self.read} is {type(output).__name__}, "
                                f"expected a Tensor; hook a layer whose {self.read} is one")
            captured[:] = [output.clone()]

        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            logits = self.model(self.normalize(x))
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"HookedFeatures: layer {self.layer!r} did not run in the forward pass of "
                               f"{type(self.model).__name__}")
        out = captured[0]
        if out.dim() == 0:
            raise RuntimeError(f"HookedFeatures: layer {self.layer!r} returned a scalar, expected [N, ...]")
        features = out.mean(dim=(2, 3)) if out.dim() == 4 else out.reshape(out.shape[0], -1)
        self.num_features = features.shape[1]
        return features, logits

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, read={self.read!r}, num_features={self.num_features}"
