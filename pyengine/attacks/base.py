"""The attack interface, shared helpers and per-sample robust flags (as AutoAttack's).

An :class:`Attack` maps ``(x, y)`` to adversarial images: ``perturb(x, y, *, generator)``
returns ``x_adv: Tensor[N, 3, H, W]`` in [0, 1] with ``||x_adv - x|| <= eps`` in its norm
(enforced by a final projection, up to float32 rounding). Every attack records whether it
is ``adaptive`` (it knows the defense: defense-aware, BPDA, unrolled, transfer) or static
(made on the undefended classifier alone), so a runner can place it in the table.

Randomness. ``generator`` is a ``torch.Generator``, a :class:`~pyengine.random.GeneratorRandom`
or a :class:`~pyengine.random.CounterRandom` (recommended: ``CounterRandom(seed, indices)``).
The attack's own draws (random start, restarts, view draws of a defense-aware loss) come
from a stream forked off a CounterRandom, so they never coincide with the defender's
draws of the same seed; a defended model (see :mod:`.defended`) takes its draws from the
seed and image indices of the same generator.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..ops import NORMS
from ..purify.purifier import check_images
from ..random import CounterRandom, GeneratorRandom, Random, as_random

# Offsets of the attacker's streams forked from the generator given to perturb.
ATTACK_STREAM = 0x0A77AC00
AUX_STREAM = 0x0A77AD00


def check_labels(y, x: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Class indices ``Tensor[N]`` (integer dtype, >= 0, on x's device) -> int64 labels."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"{name} must have shape [{x.shape[0]}] (one label per image), got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"{name} is on {y.device} but x is on {x.device}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must hold class indices >= 0, got {int(y.min())}")
    return y.long()


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def per_image_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """||delta_i|| per image: Tensor[N, ...] -> Tensor[N]."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The closest point to ``x_adv`` in the eps-ball around ``x`` (L2: radial scaling), in [0, 1].

    Clamping to [0, 1] after the ball never leaves the ball, since ``x`` is in [0, 1].
    """
    x_adv = x_adv.detach().to(x.dtype)
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        scale = (eps / per_image_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        x_adv = x + delta * scale.view(-1, *([1] * (x.dim() - 1)))
    return x_adv.clamp(0, 1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C&W margin as the paper's code: ``max_{j != y} z_j - z_y`` per image (maximised)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(1) - z_y


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"ce": ce_loss, "margin": margin_loss}


# ---- random streams -------------------------------------------------------------------

def attack_stream(generator, offset: int = 0) -> Random:
    """The attacker's own stream: a fork of a CounterRandom (per image, batch-independent),
    else the given generator's sequential draws."""
    if isinstance(generator, CounterRandom):
        return generator.fork(ATTACK_STREAM + offset)
    return as_random(generator)


def derive(rng: Random, offset: int) -> Random:
    """A second independent stream of a CounterRandom; a sequential source is shared."""
    return rng.fork(offset) if isinstance(rng, CounterRandom) else rng


def subset_random(generator, index: torch.Tensor):
    """The generator for a subset ``index`` of the batch: a CounterRandom keeps each image's
    own draws (its seed, its data-set index and its call counter); others are shared."""
    if isinstance(generator, CounterRandom):
        sub = CounterRandom(generator.seed, generator.indices[index.cpu()])
        sub.calls = generator.calls
        return sub
    return generator


def replay(generator):
    """A zero-argument factory giving a source that replays ``generator``'s next draws."""
    if isinstance(generator, CounterRandom):
        return lambda: copy.copy(generator)
    if isinstance(generator, GeneratorRandom):
        inner = replay(generator.generator)
        return lambda: GeneratorRandom(inner())
    if isinstance(generator, torch.Generator):
        state = generator.get_state()

        def clone():
            g = torch.Generator(device=generator.device)
            g.set_state(state)
            return g
        return clone
    if generator is None:
        state = torch.get_rng_state()

        def restore():
            torch.set_rng_state(state)
            return None
        return restore
    raise TypeError(f"generator must be a torch.Generator, GeneratorRandom or CounterRandom, "
                    f"got {type(generator).__name__}")


def bind(model, generator):
    """Context binding a defended model (anything with ``bind``) to the images of ``generator``."""
    binder = getattr(model, "bind", None)
    return binder(generator) if callable(binder) else contextlib.nullcontext()


@torch.no_grad()
def predict(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


# ---- the interface --------------------------------------------------------------------

class Attack:
    """Base class: ``perturb(x, y, *, generator=None) -> x_adv`` (see module doc).

    Attributes: ``name``, ``eps``, ``norm`` ("linf" | "l2"), ``adaptive`` (knows the
    defense), ``eot`` (random draws averaged per gradient), ``model`` (the model whose
    gradients or predictions it uses; it judges restarts), ``restarts``.

    Subclasses implement ``_run(x, y, rng) -> x_adv`` (one attempt, with ``self.model``
    bound to the images) or override ``_perturb``.
    """

    name: str = "attack"
    adaptive: bool = False
    eot: int = 1
    restarts: int = 1

    def __init__(self, model, *, eps: float, norm: str = "linf", name: str | None = None):
        check_norm(norm)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.model, self.eps, self.norm = model, float(eps), norm
        if name is not None:
            self.name = name

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *, generator=None) -> torch.Tensor:
        """x: Tensor[N, 3, H, W] in [0, 1], y: Tensor[N] int -> x_adv in the eps-ball, in [0, 1]."""
        check_images(x)
        y = check_labels(y, x)
        x = x.detach()
        return project(self._perturb(x, y, generator), x, self.eps, self.norm)

    __call__ = perturb

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, generator) -> torch.Tensor:
        """Restarts: each later attempt attacks only the images the previous ones did not fool,
        so every image keeps its first successful adversarial example."""
        x_adv = self._attempt(x, y, generator, 0)
        for restart in range(1, self.restarts):
            with bind(self.model, generator):
                robust = predict(self.model, x_adv) == y
            index = robust.nonzero()[:, 0]
            if index.numel() == 0:
                break
            x_adv[index] = self._attempt(x[index], y[index], subset_random(generator, index), restart)
        return x_adv

    def _attempt(self, x, y, generator, restart: int) -> torch.Tensor:
        with bind(self.model, generator):
            return project(self._run(x, y, attack_stream(generator, restart)), x, self.eps, self.norm)

    def _run(self, x: torch.Tensor, y: torch.Tensor, rng: Random) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        kind = "adaptive" if self.adaptive else "static"
        return f"{type(self).__name__}(name={self.name!r}, eps={self.eps:.5g}, norm={self.norm!r}, {kind})"


class RobustResult(NamedTuple):
    images: torch.Tensor  # Tensor[N, 3, H, W]: the adversarial example, x itself where clean was already wrong
    robust: torch.Tensor  # Tensor[N] bool: still classified correctly after the attack


def attack_robust_only(attack: Attack, model, x: torch.Tensor, y: torch.Tensor, *,
                       generator=None) -> RobustResult:
    """Attack only the images ``model`` still classifies correctly (AutoAttack's protocol).

    ``model`` judges correctness: the classifier for the static column, a defended model
    (e.g. ``DefendedModel(purifier)`` bound to the defender's draws) for the purified one.
    Images misclassified on clean input keep ``x`` and ``robust=False``; an attacked image
    keeps its adversarial example whether or not it fooled ``model``.
    """
    check_images(x)
    y = check_labels(y, x)
    with bind(model, generator):
        robust = predict(model, x) == y
    images = x.detach().clone()
    index = robust.nonzero()[:, 0]
    if index.numel():
        sub = subset_random(generator, index)
        x_adv = attack.perturb(x[index], y[index], generator=sub)
        with bind(model, sub):
            fooled = predict(model, x_adv) != y[index]
        images[index] = x_adv
        robust[index[fooled]] = False
    return RobustResult(images, robust)


class Transfer(Attack):
    """(d) of Croce et al.: adversarial examples made by ``source`` on the static classifier,
    to be evaluated on the defended one (a baseline every adaptive attack must beat)."""

    adaptive = True

    def __init__(self, source: Attack, *, name: str | None = None):
        if not isinstance(source, Attack):
            raise TypeError(f"source must be an Attack, got {type(source).__name__}")
        super().__init__(source.model, eps=source.eps, norm=source.norm, name=name or f"transfer-{source.name}")
        self.source = source

    def _perturb(self, x, y, generator):
        return self.source.perturb(x, y, generator=generator)
