"""Step rules: the start point and the projected descent step of Algorithm 1.

A step rule owns the geometry of the reverse attack (norm, radius eps_v, step size):
``start(x0)`` gives the first iterate and ``step(x, grad, x0)`` moves ``x`` in place
against ``grad`` and projects it onto the eps_v ball around ``x0`` and onto [0, 1].
"""
from __future__ import annotations

import torch

from ..ops import NORMS, projection_step_
from ..random import Random, as_random

# Largest radius per norm, in pixel units of images in [0, 1]: L-inf 1 holds the whole cube;
# L2 64 is above the diameter of a 3x32x32 image (55.4), so Mao et al.'s Table 5 (eps 256/255)
# and its eps_v (512/255) fit.
EPS_MAX = {"linf": 1.0, "l2": 64.0}
# Mao et al.'s reverse attack as their code runs it (github.com/cvlab-columbia/SelfSupDefense,
# cifar10_defense.py at 29ade24): eps_v = 2 eps in the attack's norm (l. 965 adda_times = 2,
# l. 997 epsilon * adda_times, l. 999 args.norm; the paper's "Implementation Details"), step
# --pgd-alpha 2/255 in either norm (l. 467, 551, 997). Here the step follows eps_v with the
# ratio that gives the code's 2/255 at the papers' radii: eps_v / 8 for L-inf (16/255) and
# eps_v / 256 for L2 (Table 5: eps 256/255, eps_v 512/255).
EPS_V_PER_EPS = 2
STEP_RATIO = {"linf": 8, "l2": 256}


def check_eps(eps, norm: str, name: str = "eps") -> float:
    """``eps`` as a float, or ValueError unless it lies in (0, EPS_MAX[norm]]."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= EPS_MAX[norm]:
        raise ValueError(f"{name} must lie in (0, {EPS_MAX[norm]:g}] for norm {norm!r} "
                         f"(pixel units of images in [0, 1]), got {eps!r}")
    return float(eps)


def reverse_step_size(eps_v: float, norm: str = "linf") -> float:
    """The reverse attack's step for radius ``eps_v``: eps_v / 8 (L-inf) or eps_v / 256 (L2)."""
    return check_eps(eps_v, norm, "eps_v") / STEP_RATIO[norm]


def reverse_settings(eps: float, norm: str = "linf", eps_v: float | None = None) -> dict:
    """Purifier settings for an attack of radius ``eps`` in ``norm``, as Mao et al. ran them:
    ``{"norm", "eps", "step_size"}`` with eps_v = 2 eps unless ``eps_v`` is given, and its step
    by :func:`reverse_step_size`. ``Purifier(..., **reverse_settings(256/255, "l2"))`` is
    Table 5's purifier (eps_v 512/255, step 2/255, L2)."""
    eps = check_eps(eps, norm)
    radius = min(EPS_V_PER_EPS * eps, EPS_MAX[norm]) if eps_v is None else check_eps(eps_v, norm, "eps_v")
    return {"norm": norm, "eps": radius, "step_size": reverse_step_size(radius, norm)}


class ProjectedStep:
    """Sign-gradient (``norm="linf"``) or normalised-gradient (``"l2"``) descent, projected."""

    def __init__(self, eps: float, step_size: float, *, norm: str = "linf", random_start: bool = True):
        check_eps(eps, norm)
        if not 0 < step_size <= eps * 4:
            raise ValueError(f"step_size must lie in (0, 4*eps], got {step_size} with eps={eps}")
        self.eps, self.step_size, self.norm, self.random_start = eps, step_size, norm, random_start

    def start(self, x0: torch.Tensor, *, generator: "torch.Generator | Random | None" = None) -> torch.Tensor:
        """x0 plus uniform noise in the ball (Algorithm 1, line 4), or x0 itself."""
        if not self.random_start:
            return x0.clone()
        rng = as_random(generator)
        n, size = x0.shape[0], x0[0].numel()
        if self.norm == "l2":
            # A direction uniform on the sphere and a radius uniform in [0, eps].
            direction = rng.randn(n, size)
            radius = rng.rand(n, 1) * self.eps
            noise = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius
        else:
            noise = (rng.rand(n, size) * 2 - 1) * self.eps
        return (x0 + noise.view_as(x0).to(x0.device, x0.dtype)).clamp(0, 1)

    def step(self, x: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return projection_step_(x, grad, x0, self.step_size, self.eps, self.norm)

    def __repr__(self) -> str:
        return (f"ProjectedStep(norm={self.norm!r}, eps={self.eps:.5g}, step_size={self.step_size:.5g}, "
                f"random_start={self.random_start})")
