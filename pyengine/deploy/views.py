"""``render_views``: :func:`pyengine.ops.sample_views_reference` written for export.

The same parameterisation and the same arithmetic, op for op, so the rendered views (and
their autograd gradients) match the reference; only three constructions differ, because
they export to ops that TensorRT parses poorly or whose backward is a scatter:

- the interpolation matrices are built by comparing column indices with the two source
  indices of each row (Equal/Where) instead of ``scatter_add_``; an entry is ``(1-frac)+frac``
  where both indices coincide, exactly as the two scatter-adds give;
- a flipped view reads output column ``out_w-1-j`` directly instead of flipping Rx;
- view ``v*N+n`` takes image ``n`` by ``x.repeat(V, 1, 1, 1)`` instead of an index gather,
  whose backward would be a ScatterND.
"""
from __future__ import annotations

import torch

from ..ops import view_sampling as vs


def _axis_matrix(start: torch.Tensor, length: torch.Tensor, size: int, out: int,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """[M] crop start and length (fractions) -> [M, out, size] bilinear interpolation matrix."""
    i = torch.arange(out, dtype=torch.float32, device=start.device).expand(start.shape[0], out)
    if flip is not None:
        i = torch.where(flip[:, None], (out - 1) - i, i)
    src = ((start[:, None] + (i + 0.5) * length[:, None] / out) * size - 0.5).clamp(0, size - 1)
    lo = src.floor()
    frac = src - lo
    hi = (lo + 1).clamp(max=size - 1)
    cols = torch.arange(size, dtype=torch.float32, device=start.device)
    zero = torch.zeros((), device=start.device)
    return (torch.where(cols == lo[..., None], (1 - frac)[..., None], zero)
            + torch.where(cols == hi[..., None], frac[..., None], zero))


def interpolation_matrices(params: torch.Tensor, in_h: int, in_w: int, out_h: int, out_w: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ry [M, out_h, in_h], Rx [M, out_w, in_w], equal to :func:`pyengine.ops.interpolation_matrices`."""
    p = params.float()
    ry = _axis_matrix(p[:, vs.CROP_TOP], p[:, vs.CROP_HEIGHT], in_h, out_h)
    rx = _axis_matrix(p[:, vs.CROP_LEFT], p[:, vs.CROP_WIDTH], in_w, out_w, flip=p[:, vs.FLIP] > 0.5)
    return ry, rx


def render_views(x: torch.Tensor, params: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """x: Tensor[N, 3, H, W] fp32 in [0, 1]; params: Tensor[V*N, NUM_VIEW_PARAMS] -> Tensor[V*N, 3, out_h, out_w].

    Same result as ``sample_views_reference(x, params, out_h, out_w)`` (module doc).
    """
    n, _, h, w = x.shape
    m = params.shape[0]
    if m % n:
        raise ValueError(f"render_views: params must have V*N rows for N={n} images, got {m} rows")
    ry, rx = interpolation_matrices(params, h, w, out_h, out_w)
    src = x.float().repeat(m // n, 1, 1, 1)
    v = ry[:, None] @ src @ rx[:, None].transpose(-1, -2)
    p = params.float()[:, :, None, None, None]
    v = (v * p[:, vs.BRIGHTNESS]).clamp(0, 1)
    mean = vs._gray(v).mean(dim=(2, 3), keepdim=True)
    v = (p[:, vs.CONTRAST] * v + (1 - p[:, vs.CONTRAST]) * mean).clamp(0, 1)
    v = (p[:, vs.SATURATION] * v + (1 - p[:, vs.SATURATION]) * vs._gray(v)).clamp(0, 1)
    v = torch.einsum("mcd,mdhw->mchw", vs.hue_matrices(params[:, vs.HUE]), v).clamp(0, 1)
    return torch.where(p[:, vs.GRAYSCALE] > 0.5, vs._gray(v).expand_as(v), v)
