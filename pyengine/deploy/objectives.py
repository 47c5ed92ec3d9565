"""Objectives in the form the export needs: randomness as explicit inputs.

An engine objective draws its own randomness from a ``torch.Generator``; an exported
graph cannot (TensorRT ignores RandomUniform seeds), so each exportable objective says
which random tensors one purification step consumes (:meth:`ExportableObjective.random_inputs`),
how the engine draws them (:meth:`draw`, in the engine's order, so a test can feed the
graph the engine's own draws) and computes ``loss(x, *randoms) -> Tensor[N]`` from them.

Adding an objective (e.g. a SOAP auxiliary task) is one subclass registered for the
engine's objective type with :func:`register_exportable`, plus its host sampler in
``pyengine.deploy.runtime.SAMPLERS``: the input gradient (lowered automatically), the
unrolled and one-step graphs, the sidecar and the runtime's input plumbing follow.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch
from torch import nn

from ..ops import NUM_VIEW_PARAMS, contrastive_loss_reference
from ..purify.objectives import ContrastiveObjective
from .views import render_views

_EXPORTABLE: dict[type, Callable[[nn.Module], "ExportableObjective"]] = {}


class ExportableObjective(nn.Module):
    """``loss(x, *randoms)``: x Tensor[N, 3, H, W] in [0, 1] -> per-image loss Tensor[N]."""

    name: str

    def random_inputs(self, n: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        """Name -> shape of each float32 random tensor one step consumes, in ``loss`` order."""
        raise NotImplementedError

    def draw(self, n: int, h: int, w: int, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """One step's random tensors, drawn as the engine objective draws them."""
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-able description for the sidecar (what the runtime's sampler needs)."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, *randoms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def register_exportable(objective_type: type) -> Callable:
    def wrap(cls):
        _EXPORTABLE[objective_type] = cls
        return cls
    return wrap


def exportable(objective: nn.Module) -> ExportableObjective:
    """The exportable form of an engine objective; TypeError for objectives without one."""
    for kind in type(objective).__mro__:
        if kind in _EXPORTABLE:
            return _EXPORTABLE[kind](objective)
    known = ", ".join(sorted(k.__name__ for k in _EXPORTABLE))
    raise TypeError(f"no ONNX export for objective {type(objective).__name__}; exportable objectives: "
                    f"{known} (register one with pyengine.deploy.objectives.register_exportable)")


@register_exportable(ContrastiveObjective)
class ExportableContrastive(ExportableObjective):
    """L_s of Eq. 4 with the views given as ``view_params: Tensor[V*N, NUM_VIEW_PARAMS]`` (view-major)."""

    name = "contrastive"

    def __init__(self, objective: ContrastiveObjective):
        super().__init__()
        if objective.negatives != "bank":
            raise ValueError("export supports negatives='bank' only: with batch negatives the loss of an "
                             "image depends on its batch-mates, which a fixed-batch graph would bake in")
        if objective.bank is None:
            raise ValueError("the objective's bank of negatives is empty: load a checkpoint that carries "
                             "one or call build_bank(clean_images) before exporting")
        self.objective = objective
        self.views = objective.views

    def random_inputs(self, n, h, w):
        return {"view_params": (self.views.n_views * n, NUM_VIEW_PARAMS)}

    def draw(self, n, h, w, *, generator=None):
        return (self.views.draw(n, h, w, generator=generator),)

    def settings(self):
        views = asdict(self.views)
        views["scale"], views["ratio"] = list(views["scale"]), list(views["ratio"])
        return {"name": self.name, "temperature": self.objective.temperature, "negatives": "bank",
                "bank_size": int(self.objective.bank.shape[0]), "view_sampler": views}

    def loss(self, x, view_params):
        h, w = x.shape[-2:]
        z = self.objective.embed(render_views(x, view_params, h, w))
        return contrastive_loss_reference(z, self.views.n_views, self.objective.temperature, self.objective.bank)
