"""SOAP's auxiliary objectives L_aux (Shi et al., ICLR 2021, Section 3.4) and their joint-training losses.

Each is an objective the :class:`~pyengine.purify.Purifier` accepts (``objective(x) ->
Tensor[N]``, differentiable in x; an image's loss does not depend on its batch-mates
because the classifier is in eval mode during purification):

- :class:`RotationObjective` (RP, Eq. 7): a linear head on the shared features predicts
  which of four rotations an image copy has; trained with cross-entropy, purified with the
  squared error between the softmax and the one-hot target, which the paper found
  estimates eps_pfy better (Section 3.4; ``rotate_criterion_l2`` in the authors' code);
- :class:`ConsistencyObjective` (LC, Eq. 8): squared L2 distance between the logits of
  the image and of a flipped, centre-cropped, resized copy (h = g, no extra head);
- :class:`ReconstructionObjective` (DR, Eq. 6): a decoder on the shared features
  reconstructs the image; trained from a Gaussian-corrupted copy, purified on the input.

``training_losses(x, y)`` gives each task's terms of Eq. 2, normalised as the authors'
code so the paper's alpha values carry over; :func:`pyengine.train.train_classifier`
combines them with ``aux=...``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.aux_heads import AUX_TASKS, ReconstructionDecoder, RotationHead

# Joint-training defaults (Appendix A.3, Section 4): alpha per task; input corruption sigma
# 0.1 on CIFAR for RP and LC, 0.5 for DR (the paper trains DR on MNIST only, alpha 100).
TASK_DEFAULTS = {
    "rotation": {"alpha": 0.5, "noise_sigma": 0.1},
    "consistency": {"alpha": 1.0, "noise_sigma": 0.1},
    "reconstruction": {"alpha": 100.0, "noise_sigma": 0.5},
}


# SOAP's adaptive attack (github.com/Mishne-Lab/SOAP at 0953512: main.py l. 250-251, 318;
# criterions.py l. 95-97) ascends CE - 100 * beta * L_aux on batch means: F.cross_entropy over
# the N images, and L_aux as F.mse_loss(reduction="mean") over N x m elements, m per image.
# DefenseAwarePGD ascends sum_i CE_i - lam * L_aux_i with L_aux_i summed over the m elements
# (the objectives below), so the same gradient direction needs lam = 100 * beta / m.
PAPER_BETA_SCALE = 100
# LC's fixed view: the crop of the code the paper ran (24/32) and of its current code (28/32).
LC_CROP_PAPER = 0.75
LC_CROP_CURRENT = 0.875


def aux_elements(task: str, *, n_classes: int = 10, image_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """m: the elements per image that the published code's mean-reduced L_aux divides by.

    rotation: 4 rotated copies x 4 softmax outputs (``rotate_criterion_l2``, l. 68-83) = 16;
    consistency: the logits, ``n_classes`` (``pi_criterion``, l. 25-36);
    reconstruction: the pixels, C x H x W (``recon_criterion``, l. 18-23)."""
    if task == "rotation":
        return 16
    if task == "consistency":
        return int(n_classes)
    if task == "reconstruction":
        return int(torch.Size(image_shape).numel())
    raise ValueError(f"task must be one of {sorted(TASK_DEFAULTS)}, got {task!r}")


def beta_to_lam(beta: float, task: str, *, n_classes: int = 10, image_shape: tuple[int, ...] = (3, 32, 32)) -> float:
    """SOAP's beta (its Figure 5 axis) as :class:`~pyengine.attacks.DefenseAwarePGD`'s lam:
    100 * beta / m (see :func:`aux_elements`): 6.25 beta for RP, 10 beta for LC on CIFAR-10."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta != beta or abs(beta) == float("inf"):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    return PAPER_BETA_SCALE * float(beta) / aux_elements(task, n_classes=n_classes, image_shape=image_shape)


class JointLosses(NamedTuple):
    cls: torch.Tensor  # scalar: cross-entropy of the classifier on the (corrupted) training copies
    aux: torch.Tensor  # scalar: the auxiliary loss, normalised as the authors' code (alpha is tuned to it)
    logits: torch.Tensor  # Tensor[N, C]: logits of the first copy of each image, for accuracy


def corrupt(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2), clipped to [0, 1] (the paper's training corruption)."""
    if sigma == 0:
        return x
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device).to(x.device, x.dtype)
    return (x + sigma * noise).clamp(0, 1)


def rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate Tensor[N, C, H, W] by k * 90 degrees clockwise (``rotate_images`` of the authors' code)."""
    return torch.rot90(x, -k, (2, 3))


def crop_resize(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                width: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Per image: optional horizontal flip, crop, nearest-neighbour resize back to H x W.

    x: Tensor[N, C, H, W]; top, left, height, width: int64 Tensor[N] (the box in the flipped
    image); flip: bool Tensor[N]. Equals ``F.interpolate(x.flip(3)[..., t:t+h, l:l+w], (H, W))``
    (mode "nearest", as the authors' ``random_trans_combo``) image by image; differentiable in x.
    """
    n, c, h_in, w_in = x.shape
    device = x.device
    top, left, height, width, flip = (t.to(device) for t in (top, left, height, width, flip))
    rows = top[:, None] + torch.arange(h_in, device=device) * height[:, None] // h_in
    cols = left[:, None] + torch.arange(w_in, device=device) * width[:, None] // w_in
    cols = torch.where(flip[:, None], w_in - 1 - cols, cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    chan = torch.arange(c, device=device)[None, :, None, None]
    return x[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def _check_classifier(classifier: nn.Module, head: nn.Module | None, name: str) -> None:
    if not hasattr(classifier, "forward_features"):
        raise TypeError(f"{name}: classifier must offer forward_features(x) -> Tensor[N, D]; wrap a plain "
                        "nn.Module with pyengine.models.HookedFeatures(model, layer=...)")
    num_features = getattr(classifier, "num_features", None)
    in_features = getattr(head, "in_features", None)
    if num_features is not None and in_features is not None and num_features != in_features:
        raise ValueError(f"{name}: head expects {in_features} input features but the classifier gives "
                         f"{num_features}: the head was trained for another backbone")


def _check_sigma(noise_sigma: float) -> None:
    if not isinstance(noise_sigma, (int, float)) or not 0 <= noise_sigma <= 10:
        raise ValueError(f"noise_sigma must be a number in [0, 10], got {noise_sigma!r}")


class RotationObjective(nn.Module):
    """Rotation prediction (RP, Eq. 7) with a linear head on ``classifier.forward_features``.

    ``forward(x)``: x Tensor[N, 3, H, W] in [0, 1] -> Tensor[N], the purification loss
    sum_w ||softmax(h(f(rot_w x))) - onehot(w)||^2 over the four rotations (no corruption at
    test time). Draws no randomness.
    """

    task = "rotation"

    def __init__(self, classifier: nn.Module, head: RotationHead):
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"RotationObjective: head must be an nn.Module (RotationHead), got {type(head).__name__}")
        _check_classifier(classifier, head, "RotationObjective")
        self.classifier, self.head = classifier, head

    @staticmethod
    def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The four rotated copies, rotation-major: Tensor[4N, C, H, W] and their labels int64 [4N]."""
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"RotationObjective: images must be square to stack their rotations, got {tuple(x.shape)}")
        labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
        return torch.cat([rotate(x, k) for k in range(4)]), labels

    def forward(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        copies, labels = self.rotations(x)
        probs = self.head(self.classifier.forward_features(copies)).softmax(1)
        error = (probs - F.one_hot(labels, 4).to(probs.dtype)).pow(2).sum(1)
        return error.view(4, x.shape[0]).sum(0)

    def training_losses(self, x: torch.Tensor, y: torch.Tensor, *, noise_sigma: float = 0.1,
                        generator: torch.Generator | None = None) -> JointLosses:
        """Each rotated copy is corrupted, classified by g and by h (Section 4: the batch is 4N).

        cls: cross-entropy of g on all 4N copies (labels repeated); aux: mean 4-way
        cross-entropy of h (Eq. 7 divided by 4, as ``rotate_criterion``).
        """
        _check_sigma(noise_sigma)
        copies, labels = self.rotations(x)
        features = self.classifier.forward_features(corrupt(copies, noise_sigma, generator))
        logits = self.classifier.forward_head(features)
        cls = F.cross_entropy(logits, y.repeat(4))
        aux = F.cross_entropy(self.head(features), labels)
        return JointLosses(cls, aux, logits[:x.shape[0]])


class ConsistencyObjective(nn.Module):
    """Label consistency (LC, Eq. 8): h = g, the classifier itself.

    ``forward(x)``: Tensor[N] of ||g(f(x)) - g(f(a(x)))||^2 in logit space, where a is the
    deterministic flip + centre crop + nearest resize of the authors' code. The default is the
    code the paper was published with, rows and columns 4..27 of a 32x32 image (a 24x24 crop,
    ``crop_fraction=0.75``; github.com/Mishne-Lab/SOAP, criterions.py at 72b7bfb, 2021-01-22);
    the current code crops 2..29 (28x28, ``crop_fraction=LC_CROP_CURRENT``, since a5f9113,
    2021-07-27, "change default LC cropping area"). Using the input itself as one copy
    purifies every pixel (Section 4). Draws no randomness.
    """

    task = "consistency"

    def __init__(self, classifier: nn.Module, *, crop_fraction: float = LC_CROP_PAPER):
        super().__init__()
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"ConsistencyObjective: crop_fraction must lie in (0, 1], got {crop_fraction!r}")
        self.classifier, self.crop_fraction = classifier, crop_fraction
        self.head = None

    def fixed_view(self, x: torch.Tensor) -> torch.Tensor:
        """a(x): horizontal flip, centre crop of ``crop_fraction`` of each side, resize back."""
        n, _, h, w = x.shape
        ch, cw = max(1, round(h * self.crop_fraction)), max(1, round(w * self.crop_fraction))
        full = lambda v: torch.full((n,), v, dtype=torch.int64)  # noqa: E731
        return crop_resize(x, full((h - ch) // 2), full((w - cw) // 2), full(ch), full(cw),
                           torch.ones(n, dtype=torch.bool))

    def random_view(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A training augmentation as ``random_trans_combo``, drawn per image: flip with p = 0.5,
        crop at offset in [0, H/4) with side in [3H/4, H - offset), nearest resize back."""
        n, _, h, w = x.shape
        u = torch.rand(n, 5, generator=generator, device=generator.device if generator is not None else "cpu").cpu()
        top, left = (u[:, 0] * (h // 4)).long(), (u[:, 1] * (w // 4)).long()
        min_h, min_w = round(h * 0.75), round(w * 0.75)
        height = min_h + (u[:, 2] * (h - top - min_h).clamp_min(1)).long()
        width = min_w + (u[:, 3] * (w - left - min_w).clamp_min(1)).long()
        return crop_resize(x, top, left, height.clamp(max=h - top), width.clamp(max=w - left), u[:, 4] < 0.5)

    def forward(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        logits = self.classifier(torch.cat([x, self.fixed_view(x)]))
        first, second = logits.chunk(2)
        return (first - second).pow(2).sum(1)

    def training_losses(self, x: torch.Tensor, y: torch.Tensor, *, noise_sigma: float = 0.1,
                        generator: torch.Generator | None = None) -> JointLosses:
        """Two random augmentations (flip, crop, Gaussian corruption), both classified (batch 2N).

        As the paper's text (Section 4) both copies are random; the authors' code makes the
        second the fixed test-time view. aux: mean squared logit difference per element
        (``F.mse_loss`` as ``pi_criterion``).
        """
        _check_sigma(noise_sigma)
        views = torch.cat([self.random_view(x, generator), self.random_view(x, generator)])
        logits = self.classifier(corrupt(views, noise_sigma, generator))
        first, second = logits.chunk(2)
        return JointLosses(F.cross_entropy(logits, y.repeat(2)), F.mse_loss(first, second), first)


class ReconstructionObjective(nn.Module):
    """Data reconstruction (DR, Eq. 6): a decoder h on the shared features z = f(x).

    ``forward(x)``: Tensor[N] of ||x - h(f(x))||^2 (the paper computes L_aux without input
    corruption at test time). Draws no randomness.
    """

    task = "reconstruction"

    def __init__(self, classifier: nn.Module, head: ReconstructionDecoder):
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"ReconstructionObjective: head must be an nn.Module (ReconstructionDecoder), "
                            f"got {type(head).__name__}")
        _check_classifier(classifier, head, "ReconstructionObjective")
        self.classifier, self.head = classifier, head

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.classifier.forward_features(x))
        if out.shape != x.shape:
            raise ValueError(f"ReconstructionObjective: the decoder gives {tuple(out.shape)} for input "
                             f"{tuple(x.shape)}; it was built for another image size")
        return out

    def forward(self, x: torch.Tensor, *, generator=None) -> torch.Tensor:
        return (self.reconstruct(x) - x).pow(2).flatten(1).sum(1)

    def training_losses(self, x: torch.Tensor, y: torch.Tensor, *, noise_sigma: float = 0.5,
                        generator: torch.Generator | None = None) -> JointLosses:
        """The input is corrupted before the encoder; h reconstructs the clean x (Eq. 6).

        cls: cross-entropy on the corrupted input; aux: per-pixel mean squared error
        (``recon_criterion``).
        """
        _check_sigma(noise_sigma)
        features = self.classifier.forward_features(corrupt(x, noise_sigma, generator))
        logits = self.classifier.forward_head(features)
        recon = self.head(features)
        if recon.shape != x.shape:
            raise ValueError(f"ReconstructionObjective: the decoder gives {tuple(recon.shape)} for input "
                             f"{tuple(x.shape)}; it was built for another image size")
        return JointLosses(F.cross_entropy(logits, y), F.mse_loss(recon, x), logits)


def make_objective(task: str, classifier: nn.Module, head: nn.Module | None = None, *,
                   lc_crop: float | None = None) -> nn.Module:
    """The objective of ``task`` ("rotation", "consistency", "reconstruction"); ``lc_crop``:
    the consistency view's crop fraction (default :data:`LC_CROP_PAPER`), refused elsewhere."""
    if lc_crop is not None and task != "consistency":
        raise ValueError(f"lc_crop sets the label-consistency view's crop; task {task!r} has none")
    if task == "rotation":
        return RotationObjective(classifier, head)
    if task == "consistency":
        if head is not None:
            raise ValueError("the consistency objective uses the classifier itself; it takes no head")
        return ConsistencyObjective(classifier, crop_fraction=LC_CROP_PAPER if lc_crop is None else lc_crop)
    if task == "reconstruction":
        return ReconstructionObjective(classifier, head)
    raise ValueError(f"unknown auxiliary task {task!r}; expected one of {', '.join(AUX_TASKS)}")
