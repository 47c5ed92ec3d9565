"""The view sampler: SimCLR-style random augmentations, differentiable in the input.

Draws the per-view parameters of :mod:`pyengine.ops.view_sampling` (random resized crop,
flip, colour jitter, grayscale; no blur, which the paper removed on purpose because it
favours over-smooth reverse perturbations) and renders the views with ``sample_views``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops import view_sampling as vs
from ..random import Random, as_random


@dataclass
class ViewSampler:
    """Random views of a batch: ``sampler(x) -> Tensor[n_views * N, 3, H, W]`` (view-major).

    Defaults are SimCLR's augmentations as Mao et al.'s code lists them: crop scale 0.08-1
    and ratio 3/4-4/3, flip p=0.5, colour jitter (brightness, contrast, saturation 0.8, hue
    0.2), grayscale p=0.2, with the jitter applied with p=0.8 (SimCLR's ``RandomApply``). That
    code applies the jitter to every view: its ``RandomApply`` is commented out
    (github.com/cvlab-columbia/SelfSupDefense, cifar10_defense.py at 29ade24, l. 633-639).
    p=0.8 stays the default because the shipped heads and banks were trained with it and
    purification should draw the views its head was trained on; :meth:`published` gives the
    code's sampler. ``shared_across_batch`` draws one augmentation per view for the whole
    batch, as the code does with batched torchvision transforms; the default draws per image
    and per view (so an image's purification does not depend on its batch-mates).
    """

    n_views: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_p: float = 0.2
    shared_across_batch: bool = False

    def __post_init__(self):
        if not isinstance(self.n_views, int) or self.n_views < 2:
            raise ValueError(f"n_views must be an integer >= 2 (positives need a pair), got {self.n_views!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")

    @classmethod
    def published(cls, n_views: int = 4) -> "ViewSampler":
        """The sampler of Mao et al.'s code: jitter on every view, one draw per view for the batch."""
        return cls(n_views=n_views, jitter_p=1.0, shared_across_batch=True)

    _TRIES = 10  # RandomResizedCrop's attempts before it falls back to the full image
    _UNIFORMS = 2 * _TRIES + 9  # per view: tries x (area, ratio), top, left, flip, gate, b, c, s, hue, gray

    def draw(self, n_images: int, height: int, width: int, *,
             generator: "torch.Generator | Random | None" = None, steps: int | None = None) -> torch.Tensor:
        """Parameters [n_views * n_images, NUM_VIEW_PARAMS] on the CPU, view-major; with
        ``steps``, the draws of that many consecutive calls, [steps, n_views * n_images, P].

        All uniforms of a call come from one ``rng.rand(n_images, ...)``, so with a
        :class:`~pyengine.random.CounterRandom` an image's views depend on its index alone,
        and ``steps=K`` draws exactly what K single calls would (the captured purify loop
        draws a whole call's views up front).
        """
        rng = as_random(generator)
        calls = 1 if steps is None else steps
        u = torch.stack([rng.rand(n_images, self.n_views * self._UNIFORMS, shared=self.shared_across_batch)
                         for _ in range(calls)])
        u = u.reshape(calls, n_images, self.n_views, self._UNIFORMS).transpose(1, 2).reshape(-1, self._UNIFORMS)
        params = self._params(u, height, width)
        return params if steps is None else params.view(steps, -1, params.shape[-1])

    def _params(self, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Uniforms [M, _UNIFORMS] -> view parameters [M, NUM_VIEW_PARAMS]."""
        tries = self._TRIES
        params = vs.identity_view_params(u.shape[0])
        params[:, [vs.CROP_TOP, vs.CROP_LEFT, vs.CROP_HEIGHT, vs.CROP_WIDTH]] = self._crops(
            u[:, :tries], u[:, tries:2 * tries], u[:, 2 * tries], u[:, 2 * tries + 1], height, width)
        flip, gate, b, c, s, hue, gray = u[:, 2 * tries + 2:].unbind(1)
        params[:, vs.FLIP] = (flip < self.flip_p).float()
        jitter = gate < self.jitter_p
        for column, strength, draw in ((vs.BRIGHTNESS, self.brightness, b), (vs.CONTRAST, self.contrast, c),
                                       (vs.SATURATION, self.saturation, s)):
            low = max(0.0, 1 - strength)
            params[:, column] = torch.where(jitter, low + draw * (1 + strength - low), 1.0)
        params[:, vs.HUE] = torch.where(jitter, (hue * 2 - 1) * self.hue, 0.0)
        params[:, vs.GRAYSCALE] = (gray < self.grayscale_p).float()
        return params

    def _crops(self, u_area, u_ratio, u_top, u_left, height: int, width: int) -> torch.Tensor:
        """RandomResizedCrop boxes as fractions (top, left, height, width): first try that fits, else the full image."""
        area = self.scale[0] + u_area * (self.scale[1] - self.scale[0])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + u_ratio * (log_hi - log_lo)) * height / width  # pixels -> fractions
        crop_w = torch.sqrt(area * aspect)
        crop_h = torch.sqrt(area / aspect)
        fits = (crop_w <= 1) & (crop_h <= 1)
        first = torch.where(fits.any(1), fits.float().argmax(1), -1)
        pick = first.clamp(min=0)[:, None]
        crop_h = torch.where(first >= 0, crop_h.gather(1, pick)[:, 0], 1.0)
        crop_w = torch.where(first >= 0, crop_w.gather(1, pick)[:, 0], 1.0)
        return torch.stack([u_top * (1 - crop_h), u_left * (1 - crop_w), crop_h, crop_w], dim=1)

    def __call__(self, x: torch.Tensor, params: torch.Tensor | None = None, *,
                 generator: "torch.Generator | Random | None" = None, out_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> torch.Tensor:
        n, _, h, w = x.shape
        if params is None:
            params = self.draw(n, h, w, generator=generator)
        return vs.sample_views(x, params.to(x.device), h, w, out_dtype=out_dtype, channels_last=channels_last)
