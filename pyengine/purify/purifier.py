"""The Purifier: Algorithm 1 of Mao et al. (the self-supervised reverse attack).

``Purifier`` composes three parts that can be swapped independently: an objective L_s
(``x -> per-image loss``), a step rule (start point, projected step) and, inside the
contrastive objective, a view sampler. ``purify`` runs K steps of projected descent on
L_s from a (random) start inside the eps_v ball; ``forward`` classifies the result.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, NamedTuple

import torch
from torch import nn

from .. import hardware
from ..errors import NonFiniteError, check_finite
from ..models.fold import fold_batchnorm as fold_batchnorms
from ..random import Random, as_random
from .early_exit import EarlyExit, descend_with_early_exit
from .graphs import CapturedDescent, GraphCache
from .objectives import ContrastiveObjective
from .steps import ProjectedStep, reverse_step_size
from .views import ViewSampler


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# A call is padded up to a warmed-up batch size only when that at most multiplies its work by
# this: compiling measured 1.3-2.2x (docs/BENCHMARKS.md), so more padding would lose to eager.
PAD_LIMIT = 1.5


class PurifyResult(NamedTuple):
    images: torch.Tensor  # Tensor[N, 3, H, W] in [0, 1], inside the eps_v ball around the input
    loss_trace: torch.Tensor  # Tensor[K + 1, N]: L_s at the start and after every step
    steps_taken: torch.Tensor | None = None  # Tensor[N] int64: K, or fewer for images stopped early


def check_images(x, name: str = "x") -> None:
    """Raise TypeError/ValueError unless ``x`` is a finite float Tensor[N, 3, H, W] in [0, 1], N >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype} "
                        "(convert uint8 images with x.float() / 255)")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [N, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"{name} must have 3 channels (RGB) in dim 1, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")


def _module_device(module: nn.Module) -> torch.device | None:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return None if tensor is None else tensor.device


def _module_dtype(module: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _check_trace(trace: torch.Tensor) -> None:
    """Stop at NaN/inf in L_s, naming the first iterate and image. Checked once per call, after
    the loop: a per-step check would stall the GPU each step and cannot run in a CUDA graph."""
    finite = torch.isfinite(trace)
    if not bool(finite.all()):
        k, i = (~finite).nonzero()[0].tolist()
        raise NonFiniteError(f"the purification loss is {trace[k, i].item()} at iterate {k} (0: the start) for "
                             f"image {i} of the batch: the weights, the bank of negatives or the input are broken")


class Purifier(nn.Module):
    """Defend ``classifier`` at test time by reversing attacks with natural supervision.

    Args:
        classifier: a model with ``forward(x) -> logits`` and ``forward_features(x) ->
            Tensor[N, D]`` taking images in [0, 1] (registered models do; wrap others with
            :class:`pyengine.models.HookedFeatures`).
        head: the contrastive head G (ignored when ``objective`` is given).
        objective: L_s; default :class:`ContrastiveObjective` (Eq. 4) with ``views`` (default
            ``ViewSampler(n_views=n_views)``; ``ViewSampler.published()`` is Mao et al.'s code's),
            ``temperature``, ``negatives`` and ``bank``.
        step: the step rule; default :class:`ProjectedStep` with ``eps``, ``step_size``,
            ``norm`` and ``random_start``.
        steps: K, the number of purification steps (paper: 40).
        eps: eps_v, the reverse-attack radius (paper: 2 x the attack's 8/255, in the attack's
            norm: ``**reverse_settings(eps, norm)`` from :mod:`pyengine.purify.steps`).
        step_size: default :func:`~pyengine.purify.steps.reverse_step_size` (``eps / 8`` for
            L-inf, ``eps / 256`` for L2): the papers' code's 2/255 at its eps_v (16/255 L-inf,
            512/255 L2); a radius given without a step size keeps that ratio.
        seed: when given, every call draws the same randomness (a deterministic defense);
            else the global RNG (or the ``generator`` passed to ``purify``) is used.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``: the autocast dtype of
            the backbone during purification. The iterates, the step and the loss stay fp32.
            ``"auto"`` is bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX,
            detected at run time: :func:`pyengine.hardware.cpu_has_native_bf16`), fp32 on
            other CPUs (they emulate bf16, slower than fp32) and for non-fp32 classifiers. Its
            parity with fp32 on the CPU: -0.25 points on 2,000 images
            (``docs/results/cpu/parity_bf16_nhwc_2000.json``).
        cuda_graph: on CUDA, capture the K-step loop as one CUDA graph per input shape and
            replay it (needs an objective with ``draw``; calls with ``on_step`` run eagerly).
        channels_last: convert the frozen classifier to channels_last (NHWC) on the first
            call and render the views in that layout: cuDNN's tensor cores and oneDNN's CPU
            convolutions both prefer it.
        compile: ``torch.compile`` the backbone's feature extractor (True: inductor; or a
            backend name) for the batch sizes given to :meth:`warmup`, paid there; every
            other batch size runs eagerly, so no purify call ever waits for a compilation.
        fold_batchnorm: purify with a copy of the classifier whose eval-mode batch norms are
            folded into the convolutions before them (:func:`pyengine.models.fold_batchnorm`;
            the classifier given is left untouched). Only for the objective built here.
        early_exit: an :class:`EarlyExit` rule (or None: all K steps): the eager loop stops
            each image's descent once its L_s has stopped falling. Needs bank negatives; the
            CUDA-graph loop ignores it and runs all K steps.
        image_size: (H, W) the classifier was built for; inputs of another size are refused
            (None: any size). :meth:`from_checkpoint` sets the checkpoint's.

    Inputs must have the classifier's dtype (TypeError otherwise). A NaN or inf loss stops
    ``purify`` and ``loss`` with :class:`~pyengine.errors.NonFiniteError`.

    The classifier and head are put in eval mode and frozen: purification differentiates
    with respect to the input only. ``precision="fp32", cuda_graph=False,
    channels_last=False, fold_batchnorm=False`` is the reference path the fast defaults are
    checked against (``pyengine parity``).
    """

    manifest: dict | None = None  # the checkpoint's, set by pyengine.load_purifier

    def __init__(self, classifier: nn.Module, head: nn.Module | None = None, *,
                 objective: nn.Module | None = None, step: ProjectedStep | None = None,
                 steps: int = 40, eps: float = 16 / 255, step_size: float | None = None, norm: str = "linf",
                 random_start: bool = True, n_views: int = 4, views: ViewSampler | None = None,
                 temperature: float = 0.2,
                 negatives: str = "bank", bank: torch.Tensor | None = None, seed: int | None = None,
                 precision: str = "auto", cuda_graph: bool = True, channels_last: bool = True,
                 compile: bool | str = False, image_size: tuple[int, int] | None = None,
                 fold_batchnorm: bool = True, early_exit: EarlyExit | None = None):
        super().__init__()
        if not isinstance(steps, int) or not 0 <= steps <= 10_000:
            raise ValueError(f"steps must be an integer in [0, 10000], got {steps!r}")
        if image_size is not None:
            if len(image_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in image_size):
                raise ValueError(f"image_size must be None or (H, W) of positive integers, got {image_size!r}")
            image_size = tuple(image_size)
        self.image_size = image_size
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {tuple(PRECISIONS)}, got {precision!r}")
        fold_batchnorm = fold_batchnorm and objective is None  # a given objective holds its own classifier
        if objective is None:
            if head is None:
                raise ValueError("Purifier needs a contrastive head G (or an explicit objective)")
            if fold_batchnorm:
                classifier = fold_batchnorms(classifier)
            objective = ContrastiveObjective(classifier, head, views or ViewSampler(n_views=n_views),
                                             temperature=temperature, negatives=negatives, bank=bank)
        self.classifier, self.objective = classifier, objective
        if step is None:
            step_size = reverse_step_size(eps, norm) if step_size is None else step_size
            step = ProjectedStep(eps, step_size, norm=norm, random_start=random_start)
        self.step = step
        self.steps, self.seed = steps, seed
        if compile and not hasattr(objective, "compile_backbone"):
            raise ValueError(f"compile needs an objective with compile_backbone() (ContrastiveObjective), "
                             f"got {type(objective).__name__}")
        self.precision, self.cuda_graph, self.channels_last = precision, cuda_graph, channels_last
        self.compile = "inductor" if compile is True else compile
        if early_exit is not None:
            if not isinstance(early_exit, EarlyExit):
                raise TypeError(f"early_exit must be an EarlyExit or None, got {type(early_exit).__name__}")
            if not self._independent():
                raise ValueError("early_exit needs images purified independently (negatives='bank' and an objective "
                                 "with draw()): with batch negatives an image's loss depends on its batch-mates")
        self.early_exit, self.fold_batchnorm = early_exit, fold_batchnorm
        self._graphs, self._nhwc_done, self._warm = GraphCache(), False, set()
        self.eval().requires_grad_(False)
        devices = {t.device for t in (*self.parameters(), *self.buffers())}
        if len(devices) > 1:
            raise ValueError(f"classifier, head and bank live on different devices: {sorted(map(str, devices))}")

    @classmethod
    def from_checkpoint(cls, path, **settings) -> "Purifier":
        """The contrastive purifier of a checkpoint holding classifier, head and bank:
        :func:`pyengine.load_purifier` (same keywords, same defaults) for a checkpoint that
        is not SOAP's. It refuses images of another size than the checkpoint's
        (``image_size=None``: any)."""
        from ..loading import load_purifier

        return load_purifier(path, kind="contrastive", **settings)

    def train(self, mode: bool = True) -> "Purifier":
        # Purification always uses inference behaviour (BN running statistics), whatever the caller sets.
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() move the weights: graphs captured on the old addresses are stale.
        self._graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The backbone's dtype during purification on ``device`` (None: no autocast, fp32)."""
        if self.precision == "auto":
            fp32 = _module_dtype(self.classifier) in (torch.float32, None)  # an fp64/fp16 model asked for its dtype
            return hardware.fast_autocast_dtype(device) if fp32 else None
        return PRECISIONS[self.precision]

    def _autocast(self, device: torch.device):
        dtype = self.autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        # No weight-cast cache: it cannot live inside a CUDA graph, and each weight is used once per step.
        return torch.autocast(device.type, dtype=dtype, cache_enabled=False)

    def _prepare(self, device: torch.device) -> None:
        if self.channels_last and not self._nhwc_done:
            self.classifier.to(memory_format=torch.channels_last)
            if hasattr(self.objective, "channels_last"):
                self.objective.channels_last = True
            self._nhwc_done = True
        if self.compile:
            self.objective.compile_backbone(self.compile)
            self.objective.compiled_batches = self._warm  # the warmed-up sizes only (the same set, kept in sync)

    def _descent_step(self, xk: torch.Tensor, x0: torch.Tensor, draws: torch.Tensor | None = None,
                      generator: Random | None = None) -> torch.Tensor:
        """One step of Algorithm 1, moving ``xk`` in place; returns L_s at ``xk`` before it."""
        leaf = xk.detach().requires_grad_(True)
        with self._autocast(xk.device):
            loss = (self.objective(leaf, generator=generator) if draws is None
                    else self.objective(leaf, draws=draws))
        grad, = torch.autograd.grad(loss.sum(), leaf)
        self.step.step(xk, grad, x0)
        return loss.detach()

    def _use_graph(self, x: torch.Tensor, on_step) -> bool:
        return (self.cuda_graph and x.is_cuda and on_step is None and self.steps > 0
                and hasattr(self.objective, "draw"))

    def _replay(self, x0: torch.Tensor, xk: torch.Tensor, generator: Random,
                draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if draws is None:
            draws = self.objective.draw(x0, generator=generator, steps=self.steps)
        key = (tuple(x0.shape), x0.dtype, x0.device, self.steps, repr(self.step), self.autocast_dtype(x0.device))
        try:
            loop = self._graphs.get(key, lambda: CapturedDescent(self._descent_step, x0, draws))
        except RuntimeError as err:  # e.g. an objective that syncs with the host cannot be captured
            warnings.warn(f"Purifier: CUDA graph capture failed ({err}); purifying eagerly from now on",
                          RuntimeWarning, stacklevel=3)
            self.cuda_graph = False
            return xk, self._descend_eagerly(xk, x0, generator, None, draws)
        return loop.replay(x0, xk, draws)

    def _check_input(self, x: torch.Tensor) -> None:
        device = _module_device(self.classifier)
        if isinstance(x, torch.Tensor) and device is not None and x.device != device:
            raise ValueError(f"x is on {x.device} but the classifier is on {device}")
        check_images(x)
        dtype = _module_dtype(self.classifier)
        if dtype is not None and x.dtype != dtype:
            raise TypeError(f"x is {x.dtype} but the classifier's weights are {dtype}: convert it first, "
                            f"x.to({dtype})")
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"x holds {x.shape[-2]}x{x.shape[-1]} images (H x W) but the classifier was built for "
                             f"{self.image_size[0]}x{self.image_size[1]}: resize them first")

    def _random(self, generator: "torch.Generator | Random | None") -> Random:
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        return as_random(generator)

    def loss(self, x: torch.Tensor, *, generator: "torch.Generator | Random | None" = None) -> torch.Tensor:
        """L_s per image, Tensor[N] (no gradient)."""
        self._check_input(x)
        with torch.no_grad(), self._autocast(x.device):
            loss = self.objective(x, generator=self._random(generator))
        check_finite(loss, "the purification loss of the input")
        return loss

    def purify(self, x: torch.Tensor, *, generator: "torch.Generator | Random | None" = None,
               return_trace: bool = False,
               on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor | PurifyResult:
        """x: Tensor[N, 3, H, W] in [0, 1] -> purified images (and the L_s trace when asked).

        ``on_step(k, x_k)`` is called with the start (k = 0) and after every step, e.g. to
        record accuracy along the way (the paper's Fig. 5) or feature trajectories (Fig. 8).
        """
        self._check_input(x)
        self._prepare(x.device)
        generator = self._random(generator)
        x0 = x.detach()
        xk = self.step.start(x0, generator=generator)
        taken = torch.full((x0.shape[0],), self.steps, dtype=torch.int64)
        bucket = None if on_step is not None else self._bucket(x0)
        with torch.enable_grad():
            if bucket is not None:
                xk, trace = self._descend_padded(x0, xk, generator, bucket)
            elif self._use_graph(x0, on_step):
                xk, trace = self._replay(x0, xk, generator)
            elif self.early_exit is not None and on_step is None:
                trace, taken = descend_with_early_exit(
                    self._descent_step, lambda: self.objective.draw(x0, generator=generator), xk, x0, self.steps,
                    self.early_exit)
            else:
                trace = self._descend_eagerly(xk, x0, generator, on_step)
        if not return_trace:
            _check_trace(trace)
            return xk
        with torch.no_grad(), self._autocast(xk.device):
            final = self.objective(xk, generator=generator)
        trace = torch.cat([trace, final[None]])
        _check_trace(trace)
        return PurifyResult(xk, trace, taken)

    def _independent(self) -> bool:
        """Whether each image's purification depends on that image alone (and its own draws)."""
        return getattr(self.objective, "negatives", "bank") != "batch" and hasattr(self.objective, "draw")

    def _bucket(self, x0: torch.Tensor) -> int | None:
        """The warmed-up batch size a call of N images is padded up to, or None (run as it is).

        Padding happens only where it buys a compiled or captured loop: on a purifier with
        ``compile`` or a CUDA graph, to the smallest warmed size b > N with b <= PAD_LIMIT * N,
        and only when images are independent (bank negatives): then the padding images change
        nothing for the others. Batch negatives are never padded."""
        n = x0.shape[0]
        if n in self._warm or not self._independent() or not (self.compile or self._use_graph(x0, None)):
            return None
        bucket = min((b for b in self._warm if b > n), default=None)
        return bucket if bucket is not None and bucket <= PAD_LIMIT * n else None

    def _descend_padded(self, x0: torch.Tensor, xk: torch.Tensor, generator: Random,
                        bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The loop on the batch padded to ``bucket`` with copies of its last image (their
        own copies of its draws too); the real images' draws and start points are those of
        the unpadded call."""
        n = x0.shape[0]
        draws = self.objective.draw(x0, generator=generator, steps=self.steps)
        pad = lambda t, dim: torch.cat([t, t.narrow(dim, n - 1, 1).expand(  # noqa: E731
            *t.shape[:dim], bucket - n, *t.shape[dim + 1:])], dim)
        x0p, xkp = pad(x0, 0).contiguous(), pad(xk, 0).contiguous()
        draws = pad(draws.view(self.steps, -1, n, draws.shape[-1]), 2).reshape(self.steps, -1, draws.shape[-1])
        if self._use_graph(x0p, None):
            xkp, trace = self._replay(x0p, xkp, generator, draws)
        else:
            trace = self._descend_eagerly(xkp, x0p, generator, None, draws)
        return xkp[:n], trace[:, :n]

    def warmup(self, batch_sizes, *, image_size: tuple[int, int] | None = None) -> None:
        """Pay compilation (``compile``) and CUDA-graph capture for ``batch_sizes`` now, ahead
        of serving, with one purification of random images per size.

        From then on a call of a warmed-up size runs compiled; a call of N images is padded up
        to the smallest warmed size b > N when b <= 1.5 N (bank negatives only; the result of
        every image is unchanged); any other call runs eagerly, uncompiled. So a serving process
        compiles once per warmed size (e.g. powers of two up to its largest batch) and a one-off
        call never waits for a compilation. ``image_size``: (H, W), default the purifier's."""
        sizes = list(batch_sizes) if not isinstance(batch_sizes, int) else [batch_sizes]
        if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
        size = image_size or self.image_size
        if size is None:
            raise ValueError("warmup needs image_size=(H, W): this purifier accepts any size (image_size=None)")
        device = _module_device(self.classifier) or torch.device("cpu")
        dtype = _module_dtype(self.classifier) or torch.float32
        for b in sorted(set(sizes)):
            self._warm.add(b)
            x = torch.rand(b, 3, *size, generator=torch.Generator().manual_seed(b)).to(device, dtype)
            # With the trace: its last loss runs without autograd, a second compiled graph.
            self.purify(x, generator=torch.Generator().manual_seed(b), return_trace=True)

    def _descend_eagerly(self, xk: torch.Tensor, x0: torch.Tensor, generator: Random,
                         on_step: Callable[[int, torch.Tensor], None] | None,
                         draws: torch.Tensor | None = None) -> torch.Tensor:
        trace = []
        if on_step is not None:
            on_step(0, xk)
        for k in range(1, self.steps + 1):
            step_draws = None if draws is None else draws[k - 1]
            trace.append(self._descent_step(xk, x0, step_draws, generator))
            if on_step is not None:
                on_step(k, xk)
        return torch.stack(trace) if trace else x0.new_empty(0, x0.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the purified input (no gradient flows through the purification)."""
        return self.classifier(self.purify(x))

    def extra_repr(self) -> str:
        text = (f"steps={self.steps}, step={self.step!r}, seed={self.seed}, precision={self.precision!r}, "
                f"cuda_graph={self.cuda_graph}, channels_last={self.channels_last}, compile={self.compile!r}, "
                f"fold_batchnorm={self.fold_batchnorm}, early_exit={self.early_exit!r}, autocast={self._resolved()}")
        views = getattr(self.objective, "views", None)
        # Named only off the default, so that runs recorded before the option keep their digest.
        return text + (f", views={views!r}" if isinstance(views, ViewSampler) and views != ViewSampler() else "")

    def _resolved(self) -> str:
        # What "auto" means on this machine: run folders keyed by this repr never mix precisions.
        device = _module_device(self.classifier) or torch.device("cpu")
        return str(self.autocast_dtype(device) or "none").replace("torch.", "")
