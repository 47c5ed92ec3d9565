"""SOAP's Table 2 attacks as its published code ran them (Shi et al., ICLR 2021, Section 4.1).

The budgets are the paper's, fixed by the spec, not the run's ``eps``: L-inf 8/255 for FGSM
and PGD, L2 2 for C&W and DeepFool, whose minimum-norm results are projected onto that ball.
Citations are to github.com/Mishne-Lab/SOAP at commit 0953512:

- ``soap-fgsm``: one sign step of 8/255 from the input (``attacks.py`` l. 18-37);
- ``soap-pgd20``: 20 sign steps of 2/255 from the input, no random start (``pgd_linf``,
  ``attacks.py`` l. 39-65, ``randomize=False``; ``main.py`` l. 267 passes no ``randomize``);
- ``soap-cw``: Carlini & Wagner L2 with a binary search over c (``cw_attack.py``'s
  ``L2Adversary`` with its defaults, l. 51-53: confidence 0, c from 1e-3 to 1e10, 5 search
  steps of up to 500 Adam steps at lr 0.01 in tanh space, early abort), projected onto the
  L2 ball of 2 (``attacks.py`` l. 84-88);
- ``soap-deepfool``: DeepFool (Moosavi-Dezfooli et al., 2016) from the model's own
  prediction, not the label, 50 iterations, overshoot 0.02 applied to the accumulated
  perturbation (``df_attack.py`` l. 27-111), clamped to [0, 1], projected onto the L2 ball
  of 2 (``attacks.py`` l. 90-94).

torchattacks' CW has no binary search over c and its DeepFool starts from the label and
applies the overshoot to each step, so both are written here.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Attack, margin_loss
from .gradient import BIM, FGSM

SOAP_LINF_EPS = 8 / 255
SOAP_PGD_STEPS = 20
SOAP_PGD_STEP_SIZE = 2 / 255
SOAP_L2_EPS = 2.0
# "soap-table2" in a spec list: SOAP's Table 2 attack columns (FGSM, PGD, CW, DF), in order.
SOAP_TABLE2 = ("soap-fgsm", "soap-pgd20", "soap-cw", "soap-deepfool")


class CarliniWagnerL2(Attack):
    """C&W-L2 with the binary search over c of ``L2Adversary`` (the code SOAP ran).

    Per image it keeps the successful example of least L2 distance over all search steps
    (the input where none succeeded); the perturbation and Adam's state carry over from one
    search step to the next, as in that code. c starts at ``c_init`` and is multiplied by 10
    until an attack succeeds, then bisected.
    """

    def __init__(self, model: nn.Module, *, eps: float = SOAP_L2_EPS, confidence: float = 0.0,
                 c_init: float = 1e-3, c_max: float = 1e10, search_steps: int = 5, max_steps: int = 500,
                 lr: float = 1e-2, abort_early: bool = True, name: str | None = None):
        super().__init__(model, eps=eps, norm="l2", name=name or "soap-cw")
        for arg, value in (("search_steps", search_steps), ("max_steps", max_steps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        if not 0 < c_init < c_max:
            raise ValueError(f"need 0 < c_init < c_max, got c_init={c_init}, c_max={c_max}")
        self.confidence, self.c_init, self.c_max = float(confidence), float(c_init), float(c_max)
        self.search_steps, self.max_steps, self.lr, self.abort_early = search_steps, max_steps, lr, abort_early

    def _run(self, x, y, rng):
        n = x.shape[0]
        lower = torch.zeros(n, dtype=torch.float64, device=x.device)
        upper = torch.full_like(lower, self.c_max)
        c = torch.full_like(lower, self.c_init)
        best_dist = torch.full((n,), float("inf"), device=x.device)
        best = x.clone()
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))  # the code's atanh, shrunk by 1e-6
        x_tanh = (torch.tanh(w0) + 1) / 2  # distances are measured from here, as there
        pert = torch.zeros_like(x, requires_grad=True)
        optimizer = torch.optim.Adam([pert], lr=self.lr)
        check_every = max(1, self.max_steps // 10)
        for _ in range(self.search_steps):
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = float("inf")
            for step in range(self.max_steps):
                with torch.enable_grad():
                    adv = (torch.tanh(w0 + pert) + 1) / 2
                    logits = self.model(adv)
                    dist = (adv - x_tanh).pow(2).flatten(1).sum(1)
                    f = (self.confidence - margin_loss(logits, y)).clamp_min(0)
                    loss = (dist + c.to(dist.dtype) * f).sum()
                    pert.grad, = torch.autograd.grad(loss, pert)
                optimizer.step()
                if self.abort_early and step % check_every == 0:
                    if loss.item() > previous * (1 - 1e-4):
                        break
                    previous = loss.item()
                shifted = logits.detach().clone()
                shifted[torch.arange(n), y] += self.confidence
                success = shifted.argmax(1) != y
                succeeded |= success
                better = success & (dist.detach() < best_dist)
                best_dist = torch.where(better, dist.detach(), best_dist)
                best[better] = adv.detach()[better]
            upper = torch.where(succeeded & (c < upper), c, upper)
            lower = torch.where(~succeeded & (c > lower), c, lower)
            bisect = upper < 0.1 * self.c_max
            c = torch.where(bisect, (lower + upper) / 2, torch.where(succeeded, c, 10 * c))
        return best


class DeepFoolL2(Attack):
    """DeepFool as LTS4's reference code, batched: from each image's predicted class, step to
    the nearest linearised boundary among all other classes (+1e-4), accumulate the steps,
    and take ``x + (1 + overshoot) * r_tot`` clamped to [0, 1], until the prediction changes
    or ``steps`` iterations. The label ``y`` is not used (the code attacks the prediction)."""

    def __init__(self, model: nn.Module, *, eps: float = SOAP_L2_EPS, steps: int = 50, overshoot: float = 0.02,
                 name: str | None = None):
        super().__init__(model, eps=eps, norm="l2", name=name or "soap-deepfool")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not overshoot >= 0:
            raise ValueError(f"overshoot must be >= 0, got {overshoot!r}")
        self.steps, self.overshoot = steps, float(overshoot)

    def _run(self, x, y, rng):
        with torch.no_grad():
            label = self.model(x).argmax(1)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            index = active.nonzero()[:, 0]
            if index.numel() == 0:
                break
            xi = x_adv[index].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(xi)
                grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), xi, retain_graph=True)[0]
                                     for k in range(logits.shape[1])], 1)  # [n, classes, C, H, W]
            own = label[index]
            rows = torch.arange(index.numel(), device=x.device)
            w = (grads - grads[rows, own][:, None]).flatten(2)
            f = (logits - logits[rows, own][:, None]).detach()
            distance = f.abs() / w.norm(dim=2)
            distance[rows, own] = float("inf")
            k = distance.argmin(1)
            w_k = w[rows, k]
            step = ((distance[rows, k] + 1e-4) / w_k.norm(dim=1))[:, None] * w_k
            r_tot[index] += step.view_as(xi)
            x_adv[index] = (x[index] + (1 + self.overshoot) * r_tot[index]).clamp(0, 1)
            with torch.no_grad():
                still = self.model(x_adv[index]).argmax(1) == own
            active[index[~still]] = False
        return x_adv


def soap_attack(name: str, classifier: nn.Module) -> Attack | None:
    """The attack of SOAP's Table 2 named ``name`` (module doc), or None for another name."""
    if name == "soap-fgsm":
        return FGSM(classifier, eps=SOAP_LINF_EPS, name=name)
    if name == f"soap-pgd{SOAP_PGD_STEPS}":
        return BIM(classifier, eps=SOAP_LINF_EPS, steps=SOAP_PGD_STEPS, step_size=SOAP_PGD_STEP_SIZE, name=name)
    if name == "soap-cw":
        return CarliniWagnerL2(classifier, name=name)
    if name == "soap-deepfool":
        return DeepFoolL2(classifier, name=name)
    return None


