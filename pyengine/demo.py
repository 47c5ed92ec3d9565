"""The main job: attack CIFAR-10 test images, purify them, compare Standard vs Purified."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .attacks import PGD
from .data import ImageSet
from .purify import Purifier
from .resources import checkpoints_dir

CHECKPOINTS = checkpoints_dir()
# Standard training: the paper's Section 7.B setting (and its Figure 2 effect).
STANDARD_CHECKPOINT = CHECKPOINTS / "cifar10_preact_resnet_tiny.safetensors"
# FGSM-RS training: the more robust defended system (docs/RESULTS.md), so the default.
DEFAULT_CHECKPOINT = CHECKPOINTS / "cifar10_preact_resnet_tiny_fgsm.safetensors"
# airbench94, standard training on 2 CPU cores (90.4 % clean): the real model a CPU-only user
# can defend (docs/RESULTS.md, "A real model on the CPU").
AIRBENCH_CHECKPOINT = CHECKPOINTS / "cifar10_airbench94.safetensors"
# PreAct-ResNet-18, FGSM-RS, trained by the GPU run (python -m pyengine.gpu_pipeline), once committed.
GPU_CHECKPOINT = CHECKPOINTS / "cifar10_preact_resnet18_fgsm.safetensors"


def default_checkpoint(cuda: bool | None = None) -> Path:
    """The demo's checkpoint: the GPU-trained PreAct-ResNet-18 where CUDA can run it and the
    file is shipped, else the tiny FGSM-RS one (K = 40 on PreAct-ResNet-18 takes minutes per
    100 images on 2 CPU cores). ``cuda``: default ``torch.cuda.is_available()``."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    return GPU_CHECKPOINT if cuda and GPU_CHECKPOINT.is_file() else DEFAULT_CHECKPOINT


@dataclass
class DemoResult:
    n: int
    clean_standard: float
    robust_standard: float
    clean_purified: float
    robust_purified: float
    loss_clean: float
    loss_attacked: float
    loss_attacked_purified: float
    loss_clean_purified: float
    seconds: float

    def table(self) -> str:
        rows = [
            "| | Standard | Purified |",
            "| --- | ---: | ---: |",
            f"| clean accuracy | {self.clean_standard:.1%} | {self.clean_purified:.1%} |",
            f"| robust accuracy (PGD) | {self.robust_standard:.1%} | {self.robust_purified:.1%} |",
            "",
            "| mean contrastive loss L_s | before purification | after purification |",
            "| --- | ---: | ---: |",
            f"| clean images | {self.loss_clean:.4f} | {self.loss_clean_purified:.4f} |",
            f"| attacked images | {self.loss_attacked:.4f} | {self.loss_attacked_purified:.4f} |",
        ]
        return "\n".join(rows)


def run_demo(purifier: Purifier, data: ImageSet, *, attack_eps: float = 8 / 255, attack_steps: int = 10,
             batch_size: int = 50, seed: int = 0, progress: bool = True) -> DemoResult:
    """PGD (L-inf) on the undefended classifier, then purify clean and attacked images.

    The attack is static (it targets the classifier, not the purifier), as in the paper's
    Table 1; adaptive attacks belong to the evaluation suite.
    """
    start = time.perf_counter()
    classifier = purifier.classifier
    attack = PGD(classifier, eps=attack_eps, step_size=attack_eps / 4, steps=attack_steps)
    sums = torch.zeros(8, dtype=torch.float64)
    batches = data.batches(batch_size)
    total = (len(data) + batch_size - 1) // batch_size
    for i, (x, y) in enumerate(tqdm(batches, total=total, desc="attack + purify", disable=not progress)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        x_adv = attack.perturb(x, y, generator=gen)
        pure_clean = purifier.purify(x, generator=gen, return_trace=True)
        pure_adv = purifier.purify(x_adv, generator=gen, return_trace=True)
        with torch.no_grad():
            correct = [(classifier(t).argmax(1) == y).sum().item()
                       for t in (x, x_adv, pure_clean.images, pure_adv.images)]
        losses = [purifier.loss(x, generator=gen), purifier.loss(x_adv, generator=gen),
                  pure_adv.loss_trace[-1], pure_clean.loss_trace[-1]]
        sums += torch.tensor(correct + [t.sum().item() for t in losses], dtype=torch.float64)
    acc = (sums / len(data)).tolist()
    return DemoResult(len(data), acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7],
                      time.perf_counter() - start)
