"""Defended classifiers ``x -> classifier(purify(x))`` as differentiable modules, so any
gradient attack (:class:`~pyengine.attacks.PGD`, torchattacks' APGD with EOT, ...) can
target the whole defense, as Croce et al. (2022, arXiv 2202.13711) attack test-time
defenses:

- :class:`DefendedModel`: the defense itself, no gradient (the judge of robust flags);
- :class:`BPDA`: backward pass as if the purifier were the identity (straight-through);
- :class:`BPDAIterates`: the classifier's gradient averaged over the iterates x_1..x_K;
- :class:`Unrolled`: the exact gradient through the K unrolled purification steps,
  memory-bounded by recomputing each step in the backward pass.

Randomness (random start, view draws). Every forward purifies with a
:class:`~pyengine.random.CounterRandom` keyed by the seed and image indices of the
generator the attack was given (``bind``; a generator that is not a CounterRandom gives
``seed`` and batch positions):

- ``randomness="shared"`` replays that stream at every forward: the defended model is a
  deterministic function. Give the attack the defender's ``CounterRandom(seed, indices)``
  and attacker and defender see the same draws: the "deterministic" evaluation.
- ``randomness="fresh"`` forks a new stream at every forward (reproducibly), and the
  attack averages its gradient over ``eot`` forwards: the EOT evaluation.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import projection_step, projection_step_reference
from ..purify.purifier import check_images
from ..random import CounterRandom
from ..soap.select import MinAuxPurifier
from .base import subset_random
from .checks import EvaluationWarning

RANDOMNESS = ("shared", "fresh")
FRESH_STREAM = 0x0D5A3000


class DefendedModel(nn.Module):
    """``forward(x) = purifier.classifier(purifier.purify(x))`` with the draws described in the
    module doc; no gradient flows through the purification (subclasses add one).

    Args:
        purifier: a :class:`~pyengine.purify.Purifier` (``classifier``, ``objective``,
            ``step``, ``steps``, ``purify``).
        randomness: "shared" (deterministic evaluation) or "fresh" (EOT).
        seed: the defender's seed, used when the attack's generator is not a CounterRandom.
    """

    is_defended_model = True
    method = "none"

    def __init__(self, purifier: nn.Module, *, randomness: str = "shared", seed: int = 0):
        super().__init__()
        if not all(hasattr(purifier, a) for a in ("purify", "classifier", "objective", "step", "steps")):
            raise TypeError(f"purifier must be a pyengine Purifier (purify, classifier, objective, step, steps), "
                            f"got {type(purifier).__name__}")
        if randomness not in RANDOMNESS:
            raise ValueError(f"randomness must be one of {RANDOMNESS}, got {randomness!r}")
        self.purifier, self.randomness, self.seed = purifier, randomness, int(seed)
        self._binding: tuple[int, torch.Tensor | None] | None = None
        self._forwards = 0
        self._warned: set[str] = set()

    @property
    def classifier(self) -> nn.Module:
        return self.purifier.classifier

    @contextlib.contextmanager
    def bind(self, generator):
        """Key the draws of forwards inside the block by ``generator``'s seed and image indices."""
        previous = self._binding, self._forwards
        if isinstance(generator, CounterRandom):
            self._binding = (generator.seed, generator.indices)
            if self.randomness == "shared" and generator.seed != self.seed:
                self._warn_once("seed", f"{type(self).__name__} (shared randomness) replays seed {generator.seed}, "
                                f"not the defender's seed {self.seed}: the attacker sees one fixed draw that is "
                                "neither the defender's nor an EOT average; pass the defender's "
                                "CounterRandom(seed, indices) or use randomness='fresh' with eot > 1")
        else:
            self._binding = (self.seed, None)
        self._forwards = 0
        try:
            yield self
        finally:
            self._binding, self._forwards = previous

    def draws(self, n: int) -> CounterRandom:
        """The random source of the next forward on a batch of ``n`` images."""
        seed, indices = self._binding or (self.seed, None)
        if indices is None or indices.numel() != n:
            if indices is not None and self.randomness == "shared":
                self._warn_once("size", f"{type(self).__name__} is bound to {indices.numel()} images but got a "
                                f"batch of {n} (an attack attacked a subset): draws are keyed by batch position "
                                "and are not the defender's")
            indices = torch.arange(n)
        rng = CounterRandom(seed, indices)
        if self.randomness == "fresh":
            self._forwards += 1
            rng = rng.fork(FRESH_STREAM).fork(self._forwards)
        return rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: Tensor[N, 3, H, W] in [0, 1] -> logits Tensor[N, classes] of the purified images."""
        return self._defend(x, self.draws(x.shape[0]))

    def _defend(self, x: torch.Tensor, rng: CounterRandom) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier(self.purifier.purify(x.detach(), generator=rng))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, EvaluationWarning, stacklevel=3)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, randomness={self.randomness!r}, seed={self.seed}"


class BPDA(DefendedModel):
    """Backward pass differentiable approximation (Athalye et al., 2018): the forward is the
    defense, the backward treats the purifier as the identity, ``x + (purify(x) - x).detach()``,
    so the gradient is the classifier's at the purified image."""

    method = "bpda"

    def _defend(self, x, rng):
        purified = self.purifier.purify(x.detach(), generator=rng)
        return self.classifier(x + (purified - x).detach())


class _IterateAverage(torch.autograd.Function):
    """Value: classifier(last iterate); gradient: the mean of the classifier's vector-Jacobian
    products at every iterate, each straight-through to x. The VJPs are recomputed one at a
    time in backward, so memory holds one classifier graph, not K."""

    @staticmethod
    def forward(ctx, x, classifier, *iterates):
        ctx.classifier = classifier
        ctx.save_for_backward(*iterates)
        return classifier(iterates[-1])

    @staticmethod
    def backward(ctx, grad_out):
        total = None
        for xk in ctx.saved_tensors:
            with torch.enable_grad():
                xk = xk.detach().requires_grad_(True)
                g, = torch.autograd.grad(ctx.classifier(xk), xk, grad_out)
            total = g if total is None else total + g
        return (total / len(ctx.saved_tensors), None, *([None] * len(ctx.saved_tensors)))


class BPDAIterates(DefendedModel):
    """BPDA with the classifier's logits gradient averaged over the purifier's iterates
    x_every, x_2*every, ..., x_K (each straight-through), the stronger variant of Croce et al.
    The forward value is the defense's (classifier of x_K)."""

    method = "bpda-iterates"

    def __init__(self, purifier: nn.Module, *, every: int = 1, **kwargs):
        super().__init__(purifier, **kwargs)
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every

    def _defend(self, x, rng):
        steps, iterates = self.purifier.steps, []

        def record(k: int, xk: torch.Tensor) -> None:
            if k >= 1 and (k % self.every == 0 or k == steps):
                iterates.append(xk.detach().clone())  # the purifier steps x_k in place

        purified = self.purifier.purify(x.detach(), generator=rng, on_step=record)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.classifier(purified)
        return _IterateAverage.apply(x, self.classifier, *(iterates or [purified]))


class _UnrolledL2Step(torch.autograd.Function):
    """One L2 purification step x_{k+1} = P(x_k - a g/||g||) with g = grad L_s(x_k), whose
    backward recomputes g with ``create_graph=True`` (the normalised gradient depends on x_k
    through the Hessian of L_s), replaying the step's random draws. Only x_k and x0 are kept
    between forward and backward: K = 40 steps cost K images of memory, not K graphs.

    (``torch.utils.checkpoint`` would do the same but re-runs L_s inside the forward as
    well, because the inner ``autograd.grad`` unpacks its saved tensors: 3 passes, not 2.)
    """

    @staticmethod
    def forward(ctx, xk, x0, objective, rng, step_size, eps):
        ctx.objective, ctx.rng, ctx.args = objective, copy.copy(rng), (step_size, eps)
        with torch.enable_grad():
            xd = xk.detach().requires_grad_(True)
            g, = torch.autograd.grad(objective(xd, generator=rng).sum(), xd)
        ctx.save_for_backward(xk, x0)
        return projection_step(xk, g, x0, step_size, eps, "l2")

    @staticmethod
    def backward(ctx, grad_out):
        xk, x0 = ctx.saved_tensors
        with torch.enable_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xd, x0d = xk.detach().requires_grad_(True), x0.detach().requires_grad_(True)
            g, = torch.autograd.grad(ctx.objective(xd, generator=copy.copy(ctx.rng)).sum(), xd, create_graph=True)
            out = projection_step_reference(xd, g, x0d, *ctx.args, "l2")
            gx, gx0 = torch.autograd.grad(out, (xd, x0d), grad_out)
        # PyTorch backpropagates through an op whose backward has no autograd kernel as if its
        # derivative were zero, with a UserWarning: here that drops second-order terms of L_s.
        missing = sorted({str(w.message).split(": ")[0] for w in caught
                          if "autograd kernel was not registered" in str(w.message)})
        for w in caught:
            if "autograd kernel was not registered" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if missing or not g.requires_grad:
            warnings.warn(f"Unrolled (L2): no double backward through {', '.join(missing) or 'the objective'}; "
                          "the gradient omits those second-order terms of L_s (the pure-PyTorch reference ops "
                          "have them)", RuntimeWarning, stacklevel=2)
        return gx, gx0, None, None, None, None


class Unrolled(DefendedModel):
    """The exact gradient through the K unrolled purification steps (Croce et al.'s
    "full gradient"), differentiating the random start and every projected step.

    L-inf: the step uses sign(grad L_s), whose derivative is zero almost everywhere, so the
    exact derivative flows through the projection and clamp masks and the ball centre x0
    only; grad L_s is computed once per step without a graph and each step is
    checkpointed (``torch.utils.checkpoint``), keeping (x_k, g_k) per step.
    L2: the normalised gradient depends on x_k, so the backward of every step recomputes it
    with ``create_graph=True`` (Hessian-vector products of L_s), see ``_UnrolledL2Step``.

    SOAP's :class:`~pyengine.soap.MinAuxPurifier`: each image is unrolled at the radius
    min-aux picks for it (the pick held fixed, see ``_unroll_min_aux``).

    Without a gradient to compute (``torch.no_grad`` or x not requiring grad) the forward is
    the defense itself.
    """

    method = "unrolled"

    def _defend(self, x, rng):
        p = self.purifier
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.classifier(p.purify(x, generator=rng))
        check_images(x.detach())
        if isinstance(p, MinAuxPurifier):
            return self.classifier(self._unroll_min_aux(x, rng))
        return self.classifier(self._unroll(x, rng, p.step))

    def _unroll(self, x, rng, rule):
        p = self.purifier
        xk = rule.start(x, generator=rng)
        for _ in range(p.steps):
            if rule.norm == "linf":
                with torch.enable_grad():
                    xd = xk.detach().requires_grad_(True)
                    g, = torch.autograd.grad(p.objective(xd, generator=rng).sum(), xd)
                xk = checkpoint(projection_step, xk, g, x, rule.step_size, rule.eps, "linf", use_reentrant=False)
            else:
                xk = _UnrolledL2Step.apply(xk, x, p.objective, rng, rule.step_size, rule.eps)
        return xk

    def _unroll_min_aux(self, x, rng):
        """SOAP's min-aux: each image unrolled at the radius the defense picks for it. The pick,
        an argmin over the radii, is piecewise constant in x, so holding it fixed gives the
        exact gradient almost everywhere; the pick e = 0 (the input kept) is the identity.
        SOAP's objectives draw no randomness, so the draws need not replay the defense's."""
        p = self.purifier
        with torch.no_grad():
            pick = p.purify(x.detach(), generator=copy.copy(rng), return_choice=True).index
        purified = x
        for e in pick.unique().tolist():
            if e > 0:
                rows = (pick == e).nonzero()[:, 0]
                part = self._unroll(x[rows], subset_random(rng, rows), p.rule(e))
                purified = purified.index_copy(0, rows, part)
        return purified
