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


def _uniform(shape, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


@dataclass
class ViewSampler:
    """Random views of a batch: ``sampler(x) -> Tensor[n_views * N, 3, H, W]`` (view-major).

    Defaults follow the paper's code: crop scale 0.08-1 and ratio 3/4-4/3, flip p=0.5,
    colour jitter (brightness, contrast, saturation 0.8, hue 0.2) applied with p=0.8,
    grayscale p=0.2. ``shared_across_batch`` draws one augmentation per view for the whole
    batch, as the paper's code does with batched torchvision transforms; the default draws
    per image and per view.
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

    def draw(self, n_images: int, height: int, width: int, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Parameters [n_views * n_images, NUM_VIEW_PARAMS] on the CPU (so draws do not depend on the device)."""
        rows = self.n_views * (1 if self.shared_across_batch else n_images)
        params = vs.identity_view_params(rows)
        params[:, [vs.CROP_TOP, vs.CROP_LEFT, vs.CROP_HEIGHT, vs.CROP_WIDTH]] = self._crops(
            rows, height, width, generator)
        params[:, vs.FLIP] = (torch.rand(rows, generator=generator) < self.flip_p).float()
        jitter = torch.rand(rows, generator=generator) < self.jitter_p
        for column, strength in ((vs.BRIGHTNESS, self.brightness), (vs.CONTRAST, self.contrast),
                                 (vs.SATURATION, self.saturation)):
            factor = _uniform(rows, max(0.0, 1 - strength), 1 + strength, generator)
            params[:, column] = torch.where(jitter, factor, params[:, column])
        params[:, vs.HUE] = torch.where(jitter, _uniform(rows, -self.hue, self.hue, generator), 0.0)
        params[:, vs.GRAYSCALE] = (torch.rand(rows, generator=generator) < self.grayscale_p).float()
        if self.shared_across_batch:
            params = params.repeat_interleave(n_images, dim=0)
        return params

    def _crops(self, rows: int, height: int, width: int, generator) -> torch.Tensor:
        """RandomResizedCrop boxes as fractions (top, left, height, width): ten tries, then the full image."""
        tries = 10
        area = _uniform((rows, tries), *self.scale, generator)
        log_ratio = _uniform((rows, tries), math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        aspect = torch.exp(log_ratio) * height / width  # width/height ratio in pixels -> in fractions
        crop_w = torch.sqrt(area * aspect)
        crop_h = torch.sqrt(area / aspect)
        fits = (crop_w <= 1) & (crop_h <= 1)
        first = torch.where(fits.any(1), fits.float().argmax(1), -1)
        pick = first.clamp(min=0)[:, None]
        crop_h = torch.where(first >= 0, crop_h.gather(1, pick)[:, 0], 1.0)
        crop_w = torch.where(first >= 0, crop_w.gather(1, pick)[:, 0], 1.0)
        top = torch.rand(rows, generator=generator) * (1 - crop_h)
        left = torch.rand(rows, generator=generator) * (1 - crop_w)
        return torch.stack([top, left, crop_h, crop_w], dim=1)

    def __call__(self, x: torch.Tensor, params: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        if params is None:
            params = self.draw(n, h, w, generator=generator)
        return vs.sample_views(x, params.to(x.device), h, w)
