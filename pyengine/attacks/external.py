"""Attacks taken from torchattacks 3.5.1 (an optional extra): C&W-L2, DeepFool, AutoAttack.

Install with ``pip install 'pyengine[attacks]'`` (scipy, which its code imports) and
``pip install --no-deps torchattacks==3.5.1`` (its metadata pins requests and torchvision;
the code imports neither). It is imported lazily, on the first perturb.

The wrappers keep this package's contract where torchattacks differs:

- torchattacks reseeds the global RNG (``torch.manual_seed(self.seed)``) and C&W calls
  ``.backward()``, which would fill ``.grad`` of trainable parameters: every call runs
  inside ``torch.random.fork_rng`` with the model's parameters frozen, and its seed is
  drawn from the attack's generator (reproducible, global RNG untouched);
- C&W-L2 and DeepFool are minimum-norm attacks: their output is projected onto the eps
  ball, as SOAP's evaluation does;
- :class:`AutoAttack` runs the standard suite with AutoAttack's own settings (100
  iterations, 9 target classes, Square with 5000 queries), not torchattacks' 10-step
  defaults, and keeps per-image robust flags itself (each component attacks only what
  is still robust), so it also works on defended models bound to the defender's draws.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
from torch import nn

from .base import Attack, attack_stream, bind, predict, project, subset_random
from .checks import check_eot

TORCHATTACKS_VERSION = "3.5.1"
INSTALL = f"pip install 'pyengine[attacks]' && pip install --no-deps torchattacks=={TORCHATTACKS_VERSION}"
_NORMS = {"linf": "Linf", "l2": "L2"}


def require_torchattacks():
    """Import torchattacks, or raise ImportError saying how to install it."""
    try:
        import torchattacks
    except ImportError as err:
        raise ImportError(f"this attack needs the optional dependency torchattacks; install it with "
                          f"`{INSTALL}` (--no-deps: its metadata pins requests~=2.25.1 and torchvision, "
                          "which its code does not import)") from err
    version = getattr(torchattacks, "__version__", "?")
    if version != TORCHATTACKS_VERSION and not getattr(require_torchattacks, "_warned", False):
        require_torchattacks._warned = True
        warnings.warn(f"pyengine is tested with torchattacks {TORCHATTACKS_VERSION}, found {version}",
                      RuntimeWarning, stacklevel=2)
    return torchattacks


@contextlib.contextmanager
def _isolated(model: nn.Module, x: torch.Tensor, rng):
    """Run a torchattacks call without touching the global RNG or parameter gradients."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []
    seed = int(rng.rand(1, 1, shared=True)[0, 0] * 2 ** 31)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for p in trainable:
            p.requires_grad_(False)
        try:
            yield seed
        finally:
            for p in trainable:
                p.requires_grad_(True)


class TorchAttack(Attack):
    """A torchattacks attack ``factory(model, torchattacks_module)``, output projected on the ball."""

    def __init__(self, model: nn.Module, factory: Callable, *, eps: float, norm: str, name: str):
        super().__init__(model, eps=eps, norm=norm, name=name)
        self.factory, self._attack = factory, None
        self.adaptive = bool(getattr(model, "is_defended_model", False))

    def _run(self, x, y, rng):
        torchattacks = require_torchattacks()
        if self._attack is None:
            self._attack = self.factory(self.model, torchattacks)
        with _isolated(self.model, x, rng) as seed:
            if hasattr(self._attack, "seed"):
                self._attack.seed = seed
            return self._attack(x.contiguous(), y).detach()  # torchattacks reshapes with .view


def CWL2(model: nn.Module, *, eps: float = 0.5, steps: int = 100, c: float = 1.0, kappa: float = 0.0,
         lr: float = 0.01, name: str | None = None) -> TorchAttack:
    """Carlini & Wagner L2 (torchattacks.CW), projected onto the L2 ball of radius eps."""
    return TorchAttack(model, lambda m, ta: ta.CW(m, c=c, kappa=kappa, steps=steps, lr=lr),
                       eps=eps, norm="l2", name=name or "cwl2")


def DeepFool(model: nn.Module, *, eps: float = 0.5, steps: int = 50, overshoot: float = 0.02,
             name: str | None = None) -> TorchAttack:
    """DeepFool (Moosavi-Dezfooli et al., 2016; torchattacks.DeepFool), projected onto the L2 ball."""
    return TorchAttack(model, lambda m, ta: ta.DeepFool(m, steps=steps, overshoot=overshoot),
                       eps=eps, norm="l2", name=name or "deepfool")


class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, 2020) from torchattacks components.

    ``version="standard"``: APGD-CE, APGD-T, FAB-T, Square (for deterministic models).
    ``version="rand"``: APGD-CE and APGD-DLR with ``eot_iter`` draws per gradient (for
    randomized defenses: give it ``BPDA(purifier, randomness="fresh")`` or ``Unrolled``).
    Images still robust after every component keep ``x`` (AutoAttack's convention).
    """

    COMPONENTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, norm: str = "linf", version: str = "standard",
                 steps: int = 100, n_target_classes: int = 9, square_queries: int = 5000, eot_iter: int = 20,
                 name: str | None = None):
        if version not in self.COMPONENTS:
            raise ValueError(f"version must be one of {sorted(self.COMPONENTS)}, got {version!r}")
        super().__init__(model, eps=eps, norm=norm, name=name or ("autoattack" if version == "standard" else "apgd-eot"))
        for arg, value in (("steps", steps), ("n_target_classes", n_target_classes),
                           ("square_queries", square_queries), ("eot_iter", eot_iter)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        self.version, self.steps, self.n_target_classes = version, steps, n_target_classes
        self.square_queries, self.eot = square_queries, (eot_iter if version == "rand" else 1)
        self.adaptive = bool(getattr(model, "is_defended_model", False))
        self._built: dict[int, list] = {}
        check_eot(self)

    def components(self, n_classes: int) -> list[tuple[str, object]]:
        """The torchattacks attacks of this version for ``n_classes`` classes (built once)."""
        if n_classes not in self._built:
            ta, m, norm = require_torchattacks(), self.model, _NORMS[self.norm]
            common = dict(norm=norm, eps=self.eps, steps=self.steps, n_restarts=1, seed=0)
            targets = max(1, min(self.n_target_classes, n_classes - 1))
            built = []
            for part in self.COMPONENTS[self.version]:
                if part in ("apgd-ce", "apgd-dlr"):
                    attack = ta.APGD(m, loss=part[5:], eot_iter=self.eot, rho=0.75, **common)
                elif part == "apgd-t":
                    attack = ta.APGDT(m, n_classes=n_classes, eot_iter=1, rho=0.75, **common)
                    attack.n_target_classes = targets
                elif part == "fab-t":
                    attack = ta.FAB(m, multi_targeted=True, n_classes=n_classes, **common)
                    attack.n_target_classes = targets
                else:
                    attack = ta.Square(m, norm=norm, eps=self.eps, n_queries=self.square_queries, n_restarts=1,
                                       p_init=0.8, loss="margin", resc_schedule=True, seed=0)
                built.append((part, attack))
            self._built[n_classes] = built
        return self._built[n_classes]

    def _perturb(self, x, y, generator):
        x = x.contiguous()  # CIFAR batches are NHWC views; torchattacks' FAB reshapes with .view
        with bind(self.model, generator), torch.no_grad():
            logits = self.model(x)
        robust = logits.argmax(1) == y
        x_adv = x.clone()
        for i, (part, attack) in enumerate(self.components(logits.shape[1])):
            index = robust.nonzero()[:, 0]
            if index.numel() == 0:
                break
            sub = subset_random(generator, index)
            with bind(self.model, sub), _isolated(self.model, x, attack_stream(sub, i)) as seed:
                attack.seed = seed
                candidate = project(attack(x[index], y[index]), x[index], self.eps, self.norm)
                fooled = predict(self.model, candidate) != y[index]
            x_adv[index[fooled]] = candidate[fooled]
            robust[index[fooled]] = False
        return x_adv
