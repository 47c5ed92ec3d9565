"""Training loops: the classifier (standard or fast FGSM-RS adversarial) and the head G.

Both loops show a progress bar, write a resumable state file after every epoch
(``<out>.resume.pt``, read back with ``weights_only=True`` so it holds tensors only) and
finish by writing a safetensors checkpoint with its manifest. A NaN or inf loss stops
training before its step, naming the epoch and step (:class:`pyengine.errors.NonFiniteError`).
"""
from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import ImageSet
from .errors import check_finite
from .models.checkpoint import save_checkpoint
from .provenance import provenance
from .resume import save_atomic, settings_differences


@dataclass
class ClassifierTrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adversarial: str = "none"  # "none" or "fgsm" (FGSM with random start, Wong et al. 2020)
    eps: float = 8 / 255
    seed: int = 0
    # SOAP joint training (Eq. 2 of Shi et al.): "rotation", "consistency", "reconstruction" or None.
    aux: str | None = None
    alpha: float | None = None  # weight of the auxiliary loss; None: the paper's value for the task
    noise_sigma: float | None = None  # Gaussian input corruption; None: the paper's value for the task
    schedule: str = "onecycle"  # or "step": lr x0.1 at 1/2 and 3/4 of the epochs (the paper's 100/150 of 200)
    precision: str = "fp32"  # "bf16": forward passes under bf16 autocast (weights and optimizer stay fp32);
    # "auto": bf16 where the device computes it natively (pyengine.hardware), else fp32
    label_smoothing: float = 0.0  # standard and adversarial training only
    bias_lr_scale: float = 1.0  # learning-rate factor of batch-norm shifts (their weight decay per step is unchanged)
    warmup_fraction: float = 0.4  # one-cycle: the fraction of steps spent rising to the peak
    crop_padding: int = 4  # random-crop augmentation: pad this many pixels, crop back
    crop_pad_mode: str = "constant"  # or "reflect"


_AUX_FIELDS = ("aux", "alpha", "noise_sigma")
SCHEDULES = ("onecycle", "step")
TRAIN_PRECISIONS = ("fp32", "bf16", "auto")


def _check_precision(precision: str) -> None:
    # fp16 would need loss scaling, so it is not offered.
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"precision must be one of {TRAIN_PRECISIONS}, got {precision!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"bf16"`` where the device has native bf16, else ``"fp32"``."""
    _check_precision(precision)
    if precision != "auto":
        return precision
    from .hardware import fast_autocast_dtype

    return "bf16" if fast_autocast_dtype(device) is not None else "fp32"


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     mode: str = "constant") -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: pad (zeros, or ``mode="reflect"``), random
    crop back, random h-flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=mode)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def _one_cycle(step: int, total: int, peak: float, warmup: float = 0.4) -> float:
    """Triangular schedule of "Fast is better than free": 0 -> peak at ``warmup`` (40%) -> 0."""
    t = step / max(total, 1)
    return peak * (t / warmup if t < warmup else max(0.0, (1 - t) / (1 - warmup)))


def _check_recipe(config: ClassifierTrainConfig) -> None:
    if config.schedule not in SCHEDULES:
        raise ValueError(f"config.schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"config.label_smoothing must lie in [0, 1), got {config.label_smoothing!r}")
    if config.label_smoothing and config.aux is not None:
        raise ValueError("config.label_smoothing applies to standard and adversarial training, not SOAP's (aux)")
    if not config.bias_lr_scale > 0:
        raise ValueError(f"config.bias_lr_scale must be > 0, got {config.bias_lr_scale!r}")
    if not 0 < config.warmup_fraction < 1:
        raise ValueError(f"config.warmup_fraction must lie in (0, 1), got {config.warmup_fraction!r}")
    if not 0 <= config.crop_padding <= 16:
        raise ValueError(f"config.crop_padding must lie in [0, 16], got {config.crop_padding!r}")
    if config.crop_pad_mode not in ("constant", "reflect"):
        raise ValueError(f"config.crop_pad_mode must be 'constant' or 'reflect', got {config.crop_pad_mode!r}")


def _param_groups(model: nn.Module, extra: list[nn.Parameter], config: ClassifierTrainConfig) -> list[dict]:
    """Batch-norm shifts get ``bias_lr_scale`` x the learning rate and the weight decay divided
    by it (the same decay per step); frozen parameters are left out."""
    params = [p for p in list(model.parameters()) + extra if p.requires_grad]
    if config.bias_lr_scale == 1.0:
        return [{"params": params, "lr_scale": 1.0, "weight_decay": config.weight_decay}]
    shifts = {id(m.bias) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    return [{"params": [p for p in params if id(p) not in shifts], "lr_scale": 1.0,
             "weight_decay": config.weight_decay},
            {"params": [p for p in params if id(p) in shifts], "lr_scale": config.bias_lr_scale,
             "weight_decay": config.weight_decay / config.bias_lr_scale}]


def _step_decay(epoch: int, epochs: int, base: float) -> float:
    """The paper's schedule: base, x0.1 from half the epochs, x0.01 from three quarters."""
    return base * 0.1 ** ((epoch >= epochs / 2) + (epoch >= epochs * 3 / 4))


def _aux_setup(model: nn.Module, config: ClassifierTrainConfig, head: nn.Module | None):
    """Resolve the SOAP settings: (objective, head, alpha, sigma), or Nones without ``aux``."""
    if config.aux is None:
        if head is not None:
            raise ValueError("aux_head was given but config.aux is None")
        return None, None, None, None
    from .models.aux_heads import build_aux_head
    from .soap import TASK_DEFAULTS, make_objective

    if config.aux not in TASK_DEFAULTS:
        raise ValueError(f"config.aux must be None or one of {', '.join(TASK_DEFAULTS)}, got {config.aux!r}")
    if config.adversarial != "none":
        raise ValueError("SOAP joint training (config.aux) is not combined with adversarial training; "
                         f"got adversarial={config.adversarial!r}")
    defaults = TASK_DEFAULTS[config.aux]
    alpha = defaults["alpha"] if config.alpha is None else config.alpha
    sigma = defaults["noise_sigma"] if config.noise_sigma is None else config.noise_sigma
    if not alpha >= 0:
        raise ValueError(f"config.alpha must be >= 0, got {alpha!r}")
    if not 0 <= sigma <= 10:
        raise ValueError(f"config.noise_sigma must lie in [0, 10], got {sigma!r}")
    if head is None:
        head = build_aux_head(config.aux, model.num_features)
    if head is not None:
        head = head.to(_device_of(model))
    return make_objective(config.aux, model, head), head, float(alpha), float(sigma)


def _fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             generator: torch.Generator) -> torch.Tensor:
    delta = ((torch.rand(x.shape, generator=generator) * 2 - 1) * eps).to(x.device)
    delta.requires_grad_(True)
    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    grad, = torch.autograd.grad(loss, delta)
    delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: ImageSet, batch_size: int = 500) -> float:
    model.eval()
    device = _device_of(model)
    correct = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in data.batches(batch_size))
    return correct / max(len(data), 1)


def _device_of(module: nn.Module) -> torch.device:
    """Training runs where the caller put the model (``model.to(device)``); batches follow it."""
    return next(module.parameters()).device


def command_line() -> str:
    return "pyengine " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


def train_classifier(model: nn.Module, train: ImageSet, out: str | Path, config: ClassifierTrainConfig,
                     *, test: ImageSet | None = None, manifest: dict | None = None,
                     progress: bool = True, aux_head: nn.Module | None = None) -> dict:
    """Train ``model`` in place and save it to ``out``; returns the final metrics.

    With ``config.aux`` set, trains SOAP's Eq. 2 jointly: cross-entropy + alpha * L_aux on
    Gaussian-corrupted inputs (:mod:`pyengine.soap.objectives`), with ``aux_head`` (default:
    a head of the task's default sizes) trained alongside and saved as ``aux.<task>``.
    Rotation and reconstruction batches get the usual crop and flip first; label
    consistency draws its own crops and flips, as the authors' code. Metrics then also
    hold the last epoch's mean ``train_cls_loss`` and ``train_aux_loss``.
    Training runs on the model's device (move it first: ``model.to("cuda")``).
    """
    _check_recipe(config)
    objective, head, alpha, sigma = _aux_setup(model, config, aux_head)
    device = _device_of(model)
    precision = resolve_precision(config.precision, device)
    out = Path(out)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    if hasattr(model, "init_from_data"):  # e.g. a whitening stem; a resume restores the same values
        model.init_from_data(train.subset(5000).float_images())
    params = _param_groups(model, list(head.parameters()) if head is not None else [], config)
    opt = torch.optim.SGD(params, lr=0.0, momentum=config.momentum, nesterov=True)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    settings = {**asdict(config), "precision": precision}
    start_epoch = _maybe_resume(out, model, opt, gen, head, settings=settings)
    model.to(memory_format=torch.channels_last)  # oneDNN and cuDNN convolutions prefer NHWC
    aux_metrics = {}
    for epoch in range(start_epoch, config.epochs):
        model.train()
        if head is not None:
            head.train()
        bar = tqdm(train.batches(config.batch_size, shuffle=True, generator=gen), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        seen = correct = 0
        sums = [0.0, 0.0]
        for i, (x, y) in enumerate(bar):
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            lr = (_one_cycle(epoch * steps_per_epoch + i, total, config.lr, config.warmup_fraction)
                  if config.schedule == "onecycle" else _step_decay(epoch, config.epochs, config.lr))
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with _autocast(device, precision):
                if objective is None:
                    x = random_crop_flip(x, gen, config.crop_padding, config.crop_pad_mode)
                    if config.adversarial == "fgsm":
                        x = _fgsm_rs(model, x, y, config.eps, gen)
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                else:
                    if config.aux != "consistency":
                        x = random_crop_flip(x, gen, config.crop_padding, config.crop_pad_mode)
                    cls_loss, aux_loss, logits = objective.training_losses(x, y, noise_sigma=sigma, generator=gen)
                    loss = cls_loss + alpha * aux_loss
                    sums[0] += cls_loss.item() * len(y)
                    sums[1] += aux_loss.item() * len(y)
            # Before the step: a NaN loss would make every weight NaN and the checkpoint useless.
            check_finite(loss.item(), f"the training loss at epoch {epoch + 1}, step {i + 1} (lr {lr:.3g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
        state = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "generator": gen.get_state(), "settings": json.dumps(settings, sort_keys=True)}
        if head is not None:
            state["aux_head"] = head.state_dict()
        save_atomic(state, _resume_path(out))
        if objective is not None:
            aux_metrics = {"train_cls_loss": sums[0] / max(seen, 1), "train_aux_loss": sums[1] / max(seen, 1)}
        if progress:
            msg = f"epoch {epoch + 1}: train acc {correct / max(seen, 1):.4f}"
            if objective is not None:
                msg += (f", cls loss {aux_metrics['train_cls_loss']:.4f}, "
                        f"{config.aux} loss {aux_metrics['train_aux_loss']:.4f}")
            if test is not None:
                msg += f", test acc {evaluate_accuracy(model, test):.4f}"
            tqdm.write(msg)
    metrics = {"test_accuracy": evaluate_accuracy(model, test)} if test is not None else {}
    training = {"command": command_line(), **settings}
    extra = dict(manifest or {})
    aux_parts = None
    if objective is None:
        for key in _AUX_FIELDS:
            training.pop(key)
        if config.schedule == "onecycle":
            training.pop("schedule")  # manifests of plain training stay as they were
    else:
        from .soap import aux_manifest

        metrics.update(aux_metrics)
        training.update(alpha=alpha, noise_sigma=sigma)
        extra.update(aux_manifest(config.aux, alpha, sigma, head))
        aux_parts = {config.aux: head.eval()} if head is not None else None
    for key, default in _RECIPE_DEFAULTS.items():
        if training[key] == default:
            training.pop(key)  # manifests of runs without these settings stay as they were
    if precision == "fp32":
        training.pop("precision")
    save_checkpoint(out, model.eval(), aux=aux_parts, training=training, metrics=metrics,
                    **{**extra, "provenance": provenance(data=train, device=device)})
    _resume_path(out).unlink(missing_ok=True)
    return metrics


_RECIPE_DEFAULTS = {key: getattr(ClassifierTrainConfig, key) for key in
                    ("label_smoothing", "bias_lr_scale", "warmup_fraction", "crop_padding", "crop_pad_mode")}


def _maybe_resume(out: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                  aux_head: nn.Module | None = None, *, settings: dict) -> int:
    path = _resume_path(out)
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    if "settings" in state:
        changed = settings_differences(json.loads(state["settings"]), settings)
        if changed:
            raise ValueError(f"{path} was written with other settings: {'; '.join(changed)}; "
                             "rerun with the same settings, or delete it to train from scratch")
    model.load_state_dict(state["model"])
    if aux_head is not None:
        if "aux_head" not in state:
            raise ValueError(f"{path} was written without an auxiliary head; delete it to train from scratch")
        aux_head.load_state_dict(state["aux_head"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    tqdm.write(f"resuming {out} from epoch {state['epoch']}")
    return int(state["epoch"])


@dataclass
class HeadTrainConfig:
    epochs: int = 5
    batch_size: int = 1024
    lr: float = 1e-4
    n_views: int = 4
    temperature: float = 0.2
    bank_images: int = 512
    seed: int = 0
    precision: str = "fp32"  # or "bf16": the frozen classifier's forward under bf16 autocast


def train_head(classifier: nn.Module, head: nn.Module, train: ImageSet, out: str | Path,
               config: HeadTrainConfig, *, manifest: dict | None = None, progress: bool = True) -> dict:
    """SimCLR-style training of the head G on the frozen classifier's features (Section 3.2).

    Each batch is pad-4 cropped and flipped, then ``n_views`` views per image are drawn by
    the purifier's own view sampler and contrasted with the other images' views (NT-Xent,
    the contrastive loss with batch negatives). Finally a bank of clean-view embeddings
    (``bank_images`` training images x ``n_views`` views) is computed with the trained head
    and stored in the checkpoint, so purification needs no clean data at test time.
    """
    from .ops import contrastive_loss
    from .purify import ContrastiveObjective, ViewSampler

    out = Path(out)
    precision = resolve_precision(config.precision, _device_of(head))
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    classifier.eval().requires_grad_(False).to(memory_format=torch.channels_last)  # faster convolutions
    views = ViewSampler(n_views=config.n_views)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    settings = asdict(config)
    start_epoch = _maybe_resume(out, head, opt, gen, settings=settings)
    for epoch in range(start_epoch, config.epochs):
        head.train()
        bar = tqdm(train.batches(config.batch_size, shuffle=True, generator=gen), total=steps_per_epoch,
                   desc=f"head epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        total = 0.0
        for i, (x, _) in enumerate(bar):
            x = x.to(_device_of(head), non_blocking=True)
            with torch.no_grad(), _autocast(x.device, precision):
                features = classifier.forward_features(views(random_crop_flip(x, gen), generator=gen)).float()
            loss = contrastive_loss(head(features), config.n_views, config.temperature,
                                    batch_negatives=True).mean()
            check_finite(loss.item(), f"the head's training loss at epoch {epoch + 1}, step {i + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        save_atomic({"epoch": epoch + 1, "model": head.state_dict(), "optimizer": opt.state_dict(),
                      "generator": gen.get_state(), "settings": json.dumps(settings, sort_keys=True)},
                     _resume_path(out))
        if progress:
            tqdm.write(f"head epoch {epoch + 1}: mean contrastive loss {total / steps_per_epoch:.4f}")
    head.eval()
    bank_images = train.subset(config.bank_images).float_images().to(_device_of(head))
    objective = ContrastiveObjective(classifier, head, views, temperature=config.temperature)
    bank = objective.build_bank(bank_images, generator=gen)
    save_checkpoint(out, classifier, head=head, aux={"contrastive_bank": bank},
                    head_provenance=provenance(data=train, device=_device_of(head)),
                    head_training={"command": command_line(), **asdict(config), "precision": precision},
                    **(manifest or {}))
    _resume_path(out).unlink(missing_ok=True)
    return {"bank_size": bank.shape[0]}
