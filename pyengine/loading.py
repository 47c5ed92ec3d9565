"""Build the right purifier for a checkpoint: contrastive (Mao et al.) or SOAP (Shi et al.)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .models.checkpoint import read_manifest


def load_purifier(path: str | Path, *, map_location="cpu", steps: int | None = None,
                  eps_v: float | None = None, precision: str | None = None) -> nn.Module:
    """A checkpoint with an ``aux_task`` gives SOAP's min-aux purifier (T = 5 by default);
    one with a contrastive head gives the contrastive Purifier (K = 40, eps_v = 16/255).
    ``steps`` and ``eps_v`` override the method's defaults (min-aux chooses its own radii);
    ``precision`` the contrastive Purifier's (SOAP's purifiers run in fp32)."""
    manifest = read_manifest(path)
    overrides = {} if steps is None else {"steps": steps}
    if manifest.get("aux_task"):
        if precision not in (None, "fp32"):
            raise ValueError(f"{path} is a SOAP checkpoint, whose purifiers run in fp32; got precision={precision!r}")
        from .soap import load_soap_purifier

        return load_soap_purifier(path, "min-aux", map_location=map_location, **overrides)
    from .purify import Purifier

    if eps_v is not None:
        overrides["eps"] = eps_v
        overrides["step_size"] = eps_v / 8  # the paper's 2/255 at eps_v = 16/255
    if precision is not None:
        overrides["precision"] = precision
    return Purifier.from_checkpoint(path, map_location=map_location, **overrides)
