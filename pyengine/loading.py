"""Build the right purifier for a checkpoint: contrastive (Mao et al.) or SOAP (Shi et al.).

The one factory every command calls (``purify``, ``eval``, ``demo``, ``export onnx``), so a
flag means the same everywhere: ``eps_v`` is the contrastive purifier's radius and is
refused for a SOAP checkpoint (whose min-aux selection picks each image's radius) rather
than ignored; ``soap_eps`` fixes SOAP's radius and is refused for a contrastive one.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .models.checkpoint import read_manifest


def load_purifier(path: str | Path, *, map_location="cpu", steps: int | None = None,
                  eps_v: float | None = None, precision: str | None = None,
                  soap_eps: float | None = None) -> nn.Module:
    """A checkpoint with an ``aux_task`` gives SOAP's min-aux purifier (T = 5 by default), or
    with ``soap_eps`` Algorithm 2 at that one radius; one with a contrastive head gives the
    contrastive Purifier (K = 40, eps_v = 16/255, step eps_v / 8).

    ``steps`` overrides K or T; ``eps_v`` the contrastive radius; ``precision`` the
    contrastive Purifier's (SOAP's purifiers run in fp32). A setting that does not apply
    to the checkpoint raises ValueError naming it.
    """
    manifest = read_manifest(path)
    overrides = {} if steps is None else {"steps": steps}
    if manifest.get("aux_task"):
        if precision not in (None, "fp32"):
            raise ValueError(f"{path} is a SOAP checkpoint, whose purifiers run in fp32; got precision={precision!r}")
        if eps_v is not None:
            raise ValueError(f"eps_v (--eps-v) sets the contrastive purifier's radius, but {path} is a SOAP "
                             "checkpoint, whose min-aux selection picks each image's radius: leave it out, or, "
                             "where a command offers it, pass --soap-eps (soap_eps=) for one fixed radius")
        from .soap import load_soap_purifier

        if soap_eps is not None:
            return load_soap_purifier(path, "fixed", eps=soap_eps, map_location=map_location, **overrides)
        return load_soap_purifier(path, "min-aux", map_location=map_location, **overrides)
    from .purify import Purifier

    if soap_eps is not None:
        raise ValueError(f"soap_eps (--soap-eps) applies to SOAP checkpoints (manifest 'aux_task'); {path} is "
                         "contrastive: use eps_v (--eps-v)")
    if eps_v is not None:
        overrides["eps"] = eps_v
        overrides["step_size"] = eps_v / 8  # the paper's 2/255 at eps_v = 16/255
    if precision is not None:
        overrides["precision"] = precision
    return Purifier.from_checkpoint(path, map_location=map_location, **overrides)
