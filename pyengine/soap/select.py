"""SOAP purification: Algorithm 2 on the engine's Purifier, min-aux radius selection, the oracle.

Algorithm 2 is the engine's ``Purifier`` with ``ProjectedStep(eps, 4/255,
random_start=False)`` and T = 5 steps, so the fused step kernel and the export path serve
SOAP as they serve the contrastive purifier of Mao et al.
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn

from ..purify.purifier import Purifier, PurifyResult
from ..purify.steps import ProjectedStep
from .objectives import LC_CROP_PAPER

# Algorithm 2 on CIFAR (Section 4): T = 5 sign-gradient steps of gamma = 4/255 from zero
# init; min-aux tries eps_e = e * delta for e = 0..10 with delta = gamma.
SOAP_STEPS = 5
SOAP_STEP_SIZE = 4 / 255
SOAP_DELTA = 4 / 255
SOAP_RADII = 10


def soap_purifier(classifier: nn.Module, objective: nn.Module, *, eps: float, steps: int = SOAP_STEPS,
                  step_size: float = SOAP_STEP_SIZE, norm: str = "linf",
                  image_size: tuple[int, int] | None = None) -> Purifier:
    """Algorithm 2 at one radius: T sign-gradient steps from zero init (no random start);
    ``image_size`` as :class:`~pyengine.purify.Purifier`'s.

    fp32: min-aux compares auxiliary losses across radii, and no parity check has shown
    that reduced precision keeps those comparisons; T = 5 steps leave little to gain anyway.
    """
    return Purifier(classifier, objective=objective, steps=steps, precision="fp32", image_size=image_size,
                    step=ProjectedStep(eps, step_size, norm=norm, random_start=False))


class MinAuxResult(NamedTuple):
    images: torch.Tensor  # Tensor[N, 3, H, W] in [0, 1]: the chosen purification of each image
    eps: torch.Tensor  # Tensor[N]: the chosen radius e * delta (0 means the input itself)
    index: torch.Tensor  # int64 Tensor[N]: the chosen e
    losses: torch.Tensor  # Tensor[n_radii + 1, N]: L_aux of each radius's result
    loss_trace: torch.Tensor  # Tensor[T + 1, N]: L_aux along the chosen radius's path (constant for e = 0)


class Candidate(NamedTuple):
    """One radius's purification of the batch."""

    index: int  # e
    images: torch.Tensor  # Tensor[N, 3, H, W]
    loss_trace: torch.Tensor  # Tensor[T + 1, N]: L_aux at the start and after every step
    iterates: list | None  # [x_0, ..., x_T] when recorded


class MinAuxPurifier(nn.Module):
    """SOAP with per-image radius selection, "min-aux" (Section 3.3).

    For e = 0..n_radii it purifies the whole batch with Algorithm 2 at eps_e = e * delta
    (e = 0 is the input itself) and keeps, per image, the result with the lowest L_aux;
    ties go to the smaller radius. This is the selection of the paper's text; the authors'
    ``defenses.purify`` compares batch-mean losses, choosing one radius per batch.

    Cost: one purification pass over the batch per radius, and fewer: from zero init T
    steps of size gamma cannot leave the ball of radius T * gamma, so every radius beyond
    it yields the same images as the first such radius (computed once; by the tie rule
    the smaller radius is reported). With T = 5 and delta = gamma, radii 7..10 reuse 6.

    A drop-in for :class:`~pyengine.purify.Purifier` where attacks and the evaluation use
    one: ``purify(x, generator=, return_trace=, on_step=)``, ``loss``, ``forward``,
    ``classifier``, ``objective`` (L_aux, e.g. for the auxiliary-aware attack of Eq. 9),
    ``step`` (the rule of the largest radius) and ``steps`` (T). ``image_size``: (H, W) the
    classifier was built for, other sizes refused (None: any). From a checkpoint:
    :func:`pyengine.load_purifier`.
    """

    manifest: dict | None = None  # the checkpoint's, set by pyengine.load_purifier

    def __init__(self, classifier: nn.Module, objective: nn.Module, *, delta: float = SOAP_DELTA,
                 n_radii: int = SOAP_RADII, steps: int = SOAP_STEPS, step_size: float = SOAP_STEP_SIZE,
                 norm: str = "linf", image_size: tuple[int, int] | None = None):
        super().__init__()
        if not isinstance(n_radii, int) or isinstance(n_radii, bool) or not 1 <= n_radii <= 100:
            raise ValueError(f"n_radii must be an integer in [1, 100], got {n_radii!r}")
        if not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta!r}")
        self.classifier, self.objective = classifier, objective
        self.delta, self.n_radii = float(delta), n_radii
        self.radii = tuple(e * self.delta for e in range(n_radii + 1))
        # Plain list, not registered: the purifiers share classifier and objective with self.
        self._purifiers = [soap_purifier(classifier, objective, eps=r, steps=steps, step_size=step_size, norm=norm,
                                         image_size=image_size)
                           for r in self.radii[1:]]
        self.image_size = self._purifiers[0].image_size
        self.step, self.steps = self._purifiers[-1].step, steps
        reach = steps * step_size * (1 + 1e-4)
        beyond = [e for e, r in enumerate(self.radii) if r > reach]
        # _source[e]: the radius whose result radius e reuses (itself when computed).
        self._source = [e if not beyond or e <= beyond[0] else beyond[0] for e in range(n_radii + 1)]
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "MinAuxPurifier":
        return super().train(False)

    def rule(self, e: int) -> ProjectedStep:
        """The step rule of Algorithm 2 at radius e * delta, e = 1..n_radii."""
        if not 1 <= e <= self.n_radii:
            raise ValueError(f"radius index must lie in [1, {self.n_radii}], got {e!r}")
        return self._purifiers[e - 1].step

    def candidates(self, x: torch.Tensor, *, generator=None, record: bool = False) -> Iterator[Candidate]:
        """Each radius's purification of the batch, e = 0..n_radii (``record``: keep the iterates)."""
        self._purifiers[0]._check_input(x)
        x0 = x.detach()
        done: dict[int, Candidate] = {}
        for e in range(self.n_radii + 1):
            source = self._source[e]
            if source not in done:
                if e == 0:
                    with torch.no_grad():
                        loss = self.objective(x0, generator=generator)
                    iterates = [x0] * (self.steps + 1) if record else None
                    done[0] = Candidate(0, x0, loss.expand(self.steps + 1, -1), iterates)
                else:
                    iterates = [] if record else None
                    hook = (lambda k, xk: iterates.append(xk.detach().clone())) if record else None
                    result = self._purifiers[e - 1].purify(x0, generator=generator, return_trace=True, on_step=hook)
                    done[e] = Candidate(e, result.images, result.loss_trace, iterates)
            yield done[source]._replace(index=e)

    def purify(self, x: torch.Tensor, *, generator=None, return_trace: bool = False, return_choice: bool = False,
               on_step: Callable[[int, torch.Tensor], None] | None = None
               ) -> torch.Tensor | PurifyResult | MinAuxResult:
        """x: Tensor[N, 3, H, W] in [0, 1] -> the min-aux purified images.

        ``return_trace``: a :class:`~pyengine.purify.PurifyResult` whose trace follows each
        image's chosen radius; ``return_choice``: a :class:`MinAuxResult` (radii and losses).
        ``on_step(k, x_k)`` is called for k = 0..T with each image's iterate on its chosen
        radius's path, after the selection (so all radii's iterates are held meanwhile).
        """
        grid = list(self.candidates(x, generator=generator, record=on_step is not None))
        result = _select(grid, _first_argmin(torch.stack([c.loss_trace[-1] for c in grid])), self.delta)
        if on_step is not None:
            for k in range(self.steps + 1):
                on_step(k, _gather([c.iterates[k] for c in grid], result.index))
        if return_choice:
            return result
        return PurifyResult(result.images, result.loss_trace) if return_trace else result.images

    def loss(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        """L_aux per image, Tensor[N] (no gradient)."""
        self._purifiers[0]._check_input(x)
        with torch.no_grad():
            return self.objective(x, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the min-aux purified input (no gradient flows through the purification)."""
        return self.classifier(self.purify(x))

    def extra_repr(self) -> str:
        text = f"radii=0..{self.n_radii} x {self.delta:.5g}, steps={self.steps}, step={self.step!r}"
        crop = getattr(self.objective, "crop_fraction", LC_CROP_PAPER)
        # Named only off its default, so that runs recorded before the option keep their digest.
        return text + (f", lc_crop={crop:g}" if crop != LC_CROP_PAPER else "")


class OracleResult(NamedTuple):
    images: torch.Tensor  # Tensor[N, 3, H, W]: the oracle's purification of each image
    eps: torch.Tensor  # Tensor[N]: the oracle's radius (the min-aux one where no radius is correct)
    correct: torch.Tensor  # bool Tensor[N]: some radius of the grid classifies the image correctly
    min_aux: MinAuxResult  # the min-aux choice from the same sweep


def oracle_purify(purifier: MinAuxPurifier, x: torch.Tensor, y: torch.Tensor, *, generator=None) -> OracleResult:
    """ORACLE, AN UPPER BOUND FOR EVALUATION ONLY: it reads the true labels ``y``.

    Per image, the smallest radius of the min-aux grid whose purified image the classifier
    gets right ("oracle" in the paper's tables, an empirical upper bound of SOAP). Not a
    defense: no deployed purifier knows y. ``correct.float().mean()`` is the oracle
    accuracy. The same sweep gives the min-aux choice, so both cost one pass per radius.
    """
    if not isinstance(purifier, MinAuxPurifier):
        raise TypeError(f"oracle_purify needs a MinAuxPurifier, got {type(purifier).__name__}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype != torch.int64:
        raise ValueError(f"y must be an int64 Tensor[{x.shape[0]}] of labels, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    grid, right_of = [], {}
    for candidate in purifier.candidates(x, generator=generator):
        grid.append(candidate)
        if id(candidate.images) not in right_of:  # radii beyond the reach of T steps share one result
            with torch.no_grad():
                predictions = purifier.classifier(candidate.images).argmax(1)
            right_of[id(candidate.images)] = predictions == y.to(predictions.device)
    right = torch.stack([right_of[id(c.images)] for c in grid])  # [n_radii + 1, N]
    correct = right.any(0)
    min_aux = _select(grid, _first_argmin(torch.stack([c.loss_trace[-1] for c in grid])), purifier.delta)
    index = torch.where(correct, right.to(torch.int8).argmax(0), min_aux.index)  # argmax: the first True
    return OracleResult(_gather([c.images for c in grid], index), index.to(x.dtype) * purifier.delta, correct, min_aux)


def _select(grid: list[Candidate], index: torch.Tensor, delta: float) -> MinAuxResult:
    images = _gather([c.images for c in grid], index)
    trace = torch.stack([c.loss_trace for c in grid])  # [n_radii + 1, T + 1, N]
    trace = trace.gather(0, index.view(1, 1, -1).expand(1, trace.shape[1], -1))[0]
    return MinAuxResult(images, index.to(images.dtype) * delta, index, torch.stack([c.loss_trace[-1] for c in grid]),
                        trace)


def _gather(images_of: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Per image i, ``images_of[index[i]][i]``."""
    out = torch.empty_like(images_of[0])
    for e in index.unique().tolist():
        mask = index == e
        out[mask] = images_of[e][mask]
    return out


def _first_argmin(grid: torch.Tensor) -> torch.Tensor:
    """Index of the first minimum along dim 0 of Tensor[E, N] (NaN never wins)."""
    best = torch.zeros(grid.shape[1], dtype=torch.int64, device=grid.device)
    best_value = grid[0].clone()
    for e in range(1, grid.shape[0]):
        better = grid[e] < best_value
        best, best_value = torch.where(better, e, best), torch.where(better, grid[e], best_value)
    return best
