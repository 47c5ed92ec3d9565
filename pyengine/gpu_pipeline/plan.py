"""What the papers' GPU run does: two scales, the four settings, and the ordered steps.

Every step is one ``pyengine`` command (training, evaluation) or a short in-process action
(decoding the data, publishing a checkpoint, the tables), with a test of whether its output
already exists, the steps it needs, and its cost in measured throughputs
(:mod:`pyengine.gpu_pipeline.costs`). The order: all training first (Mao et al.'s two
settings with their heads, then SOAP's two), because only the first GPU call can carry the
training zip: once the checkpoints are committed, the repository and train.zip no longer fit
in one call's 64 MiB, and later calls carry only test images. Then the evaluations by what
the issue values most, so a run cut short by its deadline leaves the most useful part done:
Mao et al.'s static attacks, their adaptive attacks without EOT, AutoAttack, then SOAP's,
the figures, and the adaptive suite with EOT.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

STAGES = ("data", "train", "eval", "publish", "bench")


@dataclass(frozen=True)
class Setting:
    """One of the four settings of ``pyengine results`` (its directory names)."""

    name: str
    train_flags: tuple[str, ...]  # extra train-classifier flags
    soap: bool  # SOAP (Shi et al.): no contrastive head; min-aux purification
    suffix: str  # of the published checkpoint's name
    clean: float  # expected clean accuracy and fraction robust to static attacks, for the
    robust: float  # AutoAttack and APGD cost estimates only (they attack what is still correct)


SETTINGS = {s.name: s for s in (
    Setting("adversarial", ("--adversarial", "fgsm"), False, "_fgsm", 0.83, 0.45),
    Setting("standard", (), False, "", 0.94, 0.0),
    Setting("soap_lc", ("--aux", "consistency"), True, "_soap_lc", 0.85, 0.02),
    Setting("soap_rp", ("--aux", "rotation"), True, "_soap_rp", 0.75, 0.02),
)}


@dataclass(frozen=True)
class Scale:
    name: str
    model: str  # Mao et al.'s settings
    soap_model: str  # SOAP's
    precision: str  # training autocast
    recipes: dict  # setting name (or "soap") -> train-classifier flags: epochs, batch_size, lr
    head: dict  # train-head flags: epochs, limit, batch_size, lr, views
    n_static: int
    static_batch: int
    n_adaptive: int
    adaptive_batch: int
    static: tuple[str, ...]  # the Table 1 attacks
    heavy: tuple[str, ...]  # AutoAttack: its own step, after the adaptive attacks without EOT
    soap_static: tuple[str, ...]  # SOAP's Table 2 attacks as its code ran them, beside ours
    adaptive_fast: tuple[str, ...]  # the adaptive suite without EOT
    adaptive_full: tuple[str, ...]  # then the whole suite
    figures: int
    limit: int | None = None  # training images (None: all)
    test_limit: int | None = None
    purify_steps: int | None = None  # None: the method's (K = 40, SOAP's T = 5)
    measure_batches: tuple[int, int] = (2, 8)  # training batches timed for the throughput (two sizes)


# The GPU scale. PreAct-ResNet-18 for Mao et al. as in the paper; its standard recipe is a
# one-cycle schedule at batch 500 (no partial batch), its FGSM-RS recipe is Wong et al.'s
# (batch 128, peak lr 0.2, 15 epochs: 83.8 % clean / 46.1 % PGD-50). SOAP on the half-width
# PreAct-ResNet-18 (5.6 MB in fp16): with two more 22 MB checkpoints the repository alone
# would pass the 64 MiB a GPU call carries. The heads use the shipped heads' recipe.
GPU = Scale(
    name="gpu", model="preact_resnet18", soap_model="preact_resnet18_half", precision="bf16",
    recipes={"standard": {"epochs": 20, "batch_size": 500, "lr": 0.4},
             "adversarial": {"epochs": 15, "batch_size": 128, "lr": 0.2},
             "soap": {"epochs": 15, "batch_size": 256, "lr": 0.2}},
    head={"epochs": 20, "limit": 25000, "batch_size": 512, "lr": 3e-3, "views": 4},
    n_static=1000, static_batch=500, n_adaptive=200, adaptive_batch=100,
    static=("pgd50", "pgd200", "bim200", "cw200"), heavy=("autoattack",),
    soap_static=("soap-pgd20", "soap-fgsm", "soap-deepfool", "soap-cw"),
    adaptive_fast=("transfer-pgd50", "bpda-pgd50", "bpda-iterates-pgd50", "unrolled-pgd50"),
    adaptive_full=("adaptive",), figures=500)

# Every step of the GPU scale on the tiny model, a few dozen images, K = 2 and one short
# attack per step: checks the pipeline itself (the steps, their order, resumption and
# publishing) on a CPU; tests/test_gpu_pipeline.py runs it. The GPU scale's attack specs are
# checked against the grammar by that test too. The figures step is left out here (its
# sweeps take minutes on a CPU; `pyengine eval --figures` is covered by reproduce_papers.sh's smoke).
SMOKE = Scale(
    name="smoke", model="preact_resnet_tiny", soap_model="preact_resnet_tiny", precision="fp32",
    recipes={"standard": {"epochs": 1, "batch_size": 16, "lr": 0.05},
             "adversarial": {"epochs": 1, "batch_size": 16, "lr": 0.05},
             "soap": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
    head={"epochs": 1, "limit": 32, "batch_size": 16, "lr": 3e-3, "views": 4},
    n_static=4, static_batch=2, n_adaptive=2, adaptive_batch=2,
    static=("pgd1",), heavy=("autoattack",), soap_static=("bim1",),
    adaptive_fast=("bpda-pgd1",), adaptive_full=("unrolled-eot2-pgd1",), figures=0,
    limit=32, test_limit=16, purify_steps=2, measure_batches=(1, 2))

SCALES = {s.name: s for s in (GPU, SMOKE)}


@dataclass(frozen=True)
class Layout:
    """Where things go. ``work``: the run's own files (data cache, fp32 checkpoints, resume
    states; never committed). ``root``: the repository (or a copy of its layout) that the
    published checkpoints and evaluation runs go to, by their repository paths, so an
    evaluation resumed on another machine sees the same checkpoint path and settings."""

    work: Path
    root: Path
    device_slug: str  # docs/results/<slug>/

    def cache_dir(self) -> Path:
        return self.work / "data"

    def classifier(self, setting: str) -> Path:
        return self.work / f"{setting}_classifier.safetensors"

    def trained(self, setting: str) -> Path:
        """The finished fp32 checkpoint: with its head (contrastive), or the classifier (SOAP)."""
        return self.work / f"{setting}.safetensors"

    def published(self, setting: Setting, scale: Scale) -> Path:
        model = scale.soap_model if setting.soap else scale.model
        return self.root / "pyengine" / "checkpoints" / f"cifar10_{model}{setting.suffix}.safetensors"

    def results(self) -> Path:
        return self.root / "docs" / "results" / self.device_slug / "reproduce"

    def eval_dir(self, setting: str, adaptive: bool) -> Path:
        """The evaluation's run folder (its per-unit files stay here, uncommitted)."""
        return self.work / "eval" / (f"{setting}_adaptive" if adaptive else setting)

    def published_eval(self, setting: str, adaptive: bool) -> Path:
        """Its report, published: results.json, table.md, config.json, figures/."""
        return self.results() / (f"{setting}_adaptive" if adaptive else setting)


@dataclass
class Step:
    """One unit of the plan. ``argv``: a pyengine command, or one of ``module`` (run as its own
    process, so a deadline can stop it and a crash leaves the others); else ``action`` runs in-process.
    ``cost(rates) -> (seconds, unit_seconds)``: the whole step, and for a resumable step the
    work lost at most when it is stopped (one epoch, one evaluation unit); None otherwise."""

    name: str
    stage: str
    done: Callable[[], bool]
    cost: Callable[[dict], tuple[float, float | None]]
    argv: list[str] | None = None
    action: Callable[[], None] | None = None
    needs: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = field(default_factory=tuple)  # what publishing lists for the commit
    after: Callable[[], None] | None = None  # after the command succeeded: publish its report
    module: str = "pyengine"  # argv runs as ``python -m <module> argv`` (pytest for the benchmarks)
    env: dict = field(default_factory=dict)  # extra environment variables of the command
    before: Callable[[], None] | None = None  # before the command (e.g. make its output folder)


def evaluated(out: Path, attacks: list[str]) -> bool:
    """``out`` holds a finished evaluation covering every attack of ``attacks``."""
    from ..attacks import expand_specs

    results = out / "results.json"
    if not results.is_file():
        return False
    done = json.loads(results.read_text()).get("config", {}).get("attacks", [])
    return set(expand_specs(attacks)) <= set(done)


def device_slug(name: str) -> str:
    """``NVIDIA H200`` -> ``h200``: the folder of a device's raw results."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return slug or "unknown"
