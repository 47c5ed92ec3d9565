"""Objectives in the form the export needs: randomness as explicit inputs.

An engine objective draws its own randomness from a ``torch.Generator``; an exported
graph cannot (TensorRT ignores RandomUniform seeds), so each exportable objective says
which random tensors one purification step consumes (:meth:`ExportableObjective.random_inputs`),
how the engine draws them (:meth:`draw`, in the engine's order, so a test can feed the
graph the engine's own draws) and computes ``loss(x, *randoms) -> Tensor[N]`` from them.

Adding an objective is one subclass registered for the engine's objective type with
:func:`register_exportable`, plus its host sampler in ``pyengine.deploy.runtime.SAMPLERS``
(an empty draw for a deterministic objective): the input gradient (lowered
automatically), the unrolled and one-step graphs, the sidecar and the runtime's input
plumbing follow. The SOAP objectives (Shi et al., ICLR 2021, Section 3.4) draw no
randomness at test time, so their graphs take no random inputs.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Callable

import torch
from torch import nn

from ..ops import NUM_VIEW_PARAMS, contrastive_loss_reference
from ..purify.objectives import ContrastiveObjective
from ..soap.objectives import ConsistencyObjective, ReconstructionObjective, RotationObjective, rotate
from .views import render_views

_EXPORTABLE: dict[type, Callable[[nn.Module], "ExportableObjective"]] = {}
PRECISIONS = ("fp32", "fp16")


class ExportableObjective(nn.Module):
    """``loss(x, *randoms)``: x Tensor[N, 3, H, W] in [0, 1] -> per-image loss Tensor[N]."""

    name: str

    def prepare(self, n: int, h: int, w: int) -> None:
        """Build what depends on the batch or image size, before tracing (default: nothing)."""

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

    def to_fp16(self) -> None:
        """Compute the network part in fp16 from now on (default: not offered)."""
        raise ValueError(f"fp16 export is implemented for the contrastive objective only, not {self.name!r}: "
                         "export it with precision='fp32'")


def fp16_copy(module: nn.Module) -> nn.Module:
    """A frozen fp16 copy of ``module`` (weights and buffers), in the standard layout."""
    return copy.deepcopy(module).half().to(memory_format=torch.contiguous_format).eval().requires_grad_(False)


def register_exportable(objective_type: type) -> Callable:
    def wrap(cls):
        _EXPORTABLE[objective_type] = cls
        return cls
    return wrap


def exportable(objective: nn.Module, *, precision: str = "fp32") -> ExportableObjective:
    """The exportable form of an engine objective (``precision``: "fp32", or "fp16" where the
    objective offers it); TypeError for objectives without one."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for kind in type(objective).__mro__:
        if kind in _EXPORTABLE:
            out = _EXPORTABLE[kind](objective)
            if precision == "fp16":
                out.to_fp16()
            return out
    known = ", ".join(sorted(k.__name__ for k in _EXPORTABLE))
    raise TypeError(f"no ONNX export for objective {type(objective).__name__}; exportable objectives: "
                    f"{known} (register one with pyengine.deploy.objectives.register_exportable)")


@register_exportable(ContrastiveObjective)
class ExportableContrastive(ExportableObjective):
    """L_s of Eq. 4 with the views given as ``view_params: Tensor[V*N, NUM_VIEW_PARAMS]`` (view-major).

    After :meth:`to_fp16` the backbone and head (weights, activations and their backward)
    run in fp16 on views rendered in fp32; the loss over the bank stays fp32, like the
    engine's autocast path: a softmax over thousands of negatives at temperature 0.2 is
    where fp16's 11-bit mantissa would lose the differences between the logits.
    """

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
        self.classifier16 = self.head16 = None

    def to_fp16(self) -> None:
        self.classifier16, self.head16 = fp16_copy(self.objective.classifier), fp16_copy(self.objective.head)

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """Tensor[M, 3, H, W] fp32 -> z Tensor[M, D] fp32 (through the fp16 copies after :meth:`to_fp16`)."""
        if self.classifier16 is None:
            return self.objective.embed(views)
        return self.head16(self.classifier16.forward_features(views.half())).float()

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
        z = self.embed(render_views(x, view_params, h, w))
        return contrastive_loss_reference(z, self.views.n_views, self.objective.temperature, self.objective.bank)


class _Deterministic(ExportableObjective):
    """A SOAP objective: no random inputs (no test-time corruption, no random views)."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective

    def random_inputs(self, n, h, w):
        return {}

    def draw(self, n, h, w, *, generator=None):
        return ()

    def settings(self):
        return {"name": self.name, "aux_task": self.objective.task}


@register_exportable(RotationObjective)
class ExportableRotation(_Deterministic):
    """RP (Eq. 7): sum over the four rotations of ||softmax(h(f(rot_w x))) - onehot(w)||^2, Tensor[N].

    As :meth:`RotationObjective.forward`, with the one-hot targets a constant (``F.one_hot``
    reads its labels' values, which tracing cannot).
    """

    name = "rotation"

    def random_inputs(self, n, h, w):
        if h != w:
            raise ValueError(f"the rotation objective needs square images to stack their rotations, got {h}x{w}")
        return {}

    def loss(self, x):
        n = x.shape[0]
        copies = torch.cat([rotate(x, k) for k in range(4)])
        probs = self.objective.head(self.objective.classifier.forward_features(copies)).softmax(1)
        target = torch.eye(4, dtype=probs.dtype, device=probs.device).repeat_interleave(n, 0)
        return (probs - target).pow(2).sum(1).view(4, n).sum(0)


@register_exportable(ConsistencyObjective)
class ExportableConsistency(_Deterministic):
    """LC (Eq. 8): ||g(x) - g(a(x))||^2 in logit space, Tensor[N], with the fixed view a as
    two selection matrices, a(x) = R_y x R_x^T (MatMul only).

    ``ConsistencyObjective.fixed_view`` indexes pixels; the gradient of indexing is a
    scatter-add, which TensorRT's parser refuses. The matrices are read off the engine's
    own ``fixed_view`` (one source of the flip, crop and nearest resize); each row holds a
    single 1, so the view's values are exactly the engine's.
    """

    name = "consistency"

    def prepare(self, n, h, w):
        device = next(self.objective.classifier.parameters()).device
        ramp = lambda size, shape: torch.arange(size, dtype=torch.float32, device=device).view(shape)  # noqa: E731
        rows = self.objective.fixed_view(ramp(h, (1, 1, h, 1)).expand(1, 3, h, w))[0, 0, :, 0].long()
        cols = self.objective.fixed_view(ramp(w, (1, 1, 1, w)).expand(1, 3, h, w))[0, 0, 0, :].long()
        self.register_buffer("rows", torch.eye(h, device=device)[rows], persistent=False)  # [H, H]
        self.register_buffer("cols_t", torch.eye(w, device=device)[cols].t().contiguous(), persistent=False)  # [W, W]

    def settings(self):
        return {**super().settings(), "crop_fraction": self.objective.crop_fraction}

    def loss(self, x):
        n, _, h, w = x.shape
        if getattr(self, "rows", None) is None or self.rows.shape[0] != h or self.cols_t.shape[0] != w:
            self.prepare(n, h, w)
        view = torch.matmul(torch.matmul(self.rows, x), self.cols_t)
        logits = self.objective.classifier(torch.cat([x, view]))
        return (logits[:n] - logits[n:]).pow(2).sum(1)


@register_exportable(ReconstructionObjective)
class ExportableReconstruction(_Deterministic):
    """DR (Eq. 6): ||x - h(f(x))||^2, Tensor[N] (uncorrupted at test time); the decoder's
    transposed convolutions have ordinary convolutions as input gradients."""

    name = "reconstruction"

    def loss(self, x):
        return self.objective(x)
