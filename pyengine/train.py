"""Training loops: the classifier (standard or fast FGSM-RS adversarial) and the head G.

Both loops show a progress bar, write a resumable state file after every epoch
(``<out>.resume.pt``, read back with ``weights_only=True`` so it holds tensors only) and
finish by writing a safetensors checkpoint with its manifest.
"""
from __future__ import annotations

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
from .models.checkpoint import save_checkpoint


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


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: zero-pad, random crop back, random h-flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def _one_cycle(step: int, total: int, peak: float) -> float:
    """Triangular schedule of "Fast is better than free": 0 -> peak at 40% -> 0."""
    t = step / max(total, 1)
    return peak * (t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6))


def _fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             generator: torch.Generator) -> torch.Tensor:
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    delta.requires_grad_(True)
    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    grad, = torch.autograd.grad(loss, delta)
    delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: ImageSet, batch_size: int = 500) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in data.batches(batch_size))
    return correct / max(len(data), 1)


def command_line() -> str:
    return "pyengine " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


def train_classifier(model: nn.Module, train: ImageSet, out: str | Path, config: ClassifierTrainConfig,
                     *, test: ImageSet | None = None, manifest: dict | None = None,
                     progress: bool = True) -> dict:
    """Train ``model`` in place and save it to ``out``; returns the final metrics."""
    out = Path(out)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    start_epoch = _maybe_resume(out, model, opt, gen)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        bar = tqdm(train.batches(config.batch_size, shuffle=True, generator=gen), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        seen = correct = 0
        for i, (x, y) in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = _one_cycle(epoch * steps_per_epoch + i, total, config.lr)
            x = random_crop_flip(x, gen)
            if config.adversarial == "fgsm":
                x = _fgsm_rs(model, x, y, config.eps, gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
        torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "generator": gen.get_state()}, _resume_path(out))
        if progress:
            msg = f"epoch {epoch + 1}: train acc {correct / max(seen, 1):.4f}"
            if test is not None:
                msg += f", test acc {evaluate_accuracy(model, test):.4f}"
            tqdm.write(msg)
    metrics = {"test_accuracy": evaluate_accuracy(model, test)} if test is not None else {}
    save_checkpoint(out, model.eval(), training={"command": command_line(), **asdict(config)},
                    metrics=metrics, **(manifest or {}))
    _resume_path(out).unlink(missing_ok=True)
    return metrics


def _maybe_resume(out: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    path = _resume_path(out)
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
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
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    classifier.eval().requires_grad_(False)
    views = ViewSampler(n_views=config.n_views)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    start_epoch = _maybe_resume(out, head, opt, gen)
    for epoch in range(start_epoch, config.epochs):
        head.train()
        bar = tqdm(train.batches(config.batch_size, shuffle=True, generator=gen), total=steps_per_epoch,
                   desc=f"head epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        total = 0.0
        for x, _ in bar:
            with torch.no_grad():
                features = classifier.forward_features(views(random_crop_flip(x, gen), generator=gen))
            loss = contrastive_loss(head(features), config.n_views, config.temperature,
                                    batch_negatives=True).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        torch.save({"epoch": epoch + 1, "model": head.state_dict(), "optimizer": opt.state_dict(),
                    "generator": gen.get_state()}, _resume_path(out))
        if progress:
            tqdm.write(f"head epoch {epoch + 1}: mean contrastive loss {total / steps_per_epoch:.4f}")
    head.eval()
    bank_images = train.subset(config.bank_images).float_images()
    objective = ContrastiveObjective(classifier, head, views, temperature=config.temperature)
    bank = objective.build_bank(bank_images, generator=gen)
    save_checkpoint(out, classifier, head=head, aux={"contrastive_bank": bank},
                    head_training={"command": command_line(), **asdict(config)}, **(manifest or {}))
    _resume_path(out).unlink(missing_ok=True)
    return {"bank_size": bank.shape[0]}
