"""Throughput measured on the machine at hand, and each step's time extrapolated from it.

:func:`measure` times the real code paths on random data for a few batches: one training
epoch of each setting (train_classifier, at its batch size; two sizes, so that fixed costs
such as saving cancel), the head's training, K-step purification (CUDA graph and bf16 on a
GPU, as ``pyengine eval`` runs it), SOAP's min-aux with its oracle, an fp32 gradient of the
classifier (what the attacks spend), JPEG decoding and the start of a pyengine process. The
rates are images per second.

The step costs are estimates: the attacks' costs come from their step counts, with
AutoAttack and APGD scaled by the fraction of images a setting is expected to keep (they
attack only those), which is known only after the run.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .plan import SETTINGS, Scale

# What an H200 should give (images/s; purification from docs/BENCHMARKS.md, the rest reasoned
# from the models' FLOPs, docs/RESULTS.md "GPU run: what remains"): the estimates in the docs,
# and the fallback when the measurement itself fails.
NOMINAL_H200 = {"train/adversarial": 7000, "train/standard": 18000, "train/soap_lc": 20000, "train/soap_rp": 10000,
                "head": 22000, "purify": 400, "grad": 15000, "grad_soap": 40000, "soap/soap_lc": 600,
                "soap/soap_rp": 300, "decode": 8000, "startup": 6.0}
AUTOATTACK_GRADIENTS = (100, 4400)  # gradient passes per clean-correct / per robust image:
# APGD-CE 100; APGD-T 9 x 100; FAB-T about 9 x 100 x 2; Square 5,000 queries at a third of a pass
APGD_ITERATIONS = 200  # APGD-CE + APGD-DLR, 100 each
_SURROGATE = re.compile(r"^(bpda-iterates|bpda|unrolled)(?:-eot(\d*))?-(.+)$")
_GRADIENT = re.compile(r"^(?:pgd|bim|cw)(\d+)$")
_APGD = re.compile(r"^apgd(?:-eot(\d*))?$")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _slope(run, n1: int, n2: int, device) -> float:
    """Images per second of ``run(n)``: a warm-up, then two sizes (fixed costs cancel)."""
    run(n1)
    t1, t2 = _timed(lambda: run(n1), device), _timed(lambda: run(n2), device)
    return (n2 - n1) / max(t2 - t1, 1e-6)


def _random_set(n: int, device):
    from ..data import ImageSet

    gen = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return ImageSet(images, torch.arange(n) % 10).to(device)


def measure(scale: Scale, settings: list[str], device: torch.device, *, train: list[str] | None = None,
            data: Path | None = None, log=print) -> dict[str, float]:
    """The rates the step costs of ``settings`` read (images/s; ``startup`` in seconds);
    training is timed for the settings in ``train`` only (default: all)."""
    with tempfile.TemporaryDirectory(prefix="pyengine-measure-") as tmp:
        return _measure(scale, settings, settings if train is None else train, device, Path(tmp), data, log)


def _measure(scale: Scale, settings: list[str], to_train: list[str], device: torch.device, tmp: Path,
             data: Path | None, log) -> dict[str, float]:
    from ..models import ContrastiveHead, create_model, model_config
    from ..train import ClassifierTrainConfig, HeadTrainConfig, train_classifier, train_head

    rates: dict[str, float] = {}
    small, large = scale.measure_batches
    for name in to_train:
        setting = SETTINGS[name]
        recipe = scale.recipes["soap" if setting.soap else name]
        model_name = scale.soap_model if setting.soap else scale.model
        flags = dict(zip(setting.train_flags[::2], setting.train_flags[1::2]))
        config = ClassifierTrainConfig(epochs=1, batch_size=recipe["batch_size"], lr=recipe["lr"],
                                       precision=scale.precision, adversarial=flags.get("--adversarial", "none"),
                                       aux=flags.get("--aux"))

        def train(n: int) -> None:
            model = create_model(model_name).to(device)
            train_classifier(model, _random_set(n, device), tmp / f"{name}{n}.safetensors", config, progress=False)

        rates[f"train/{name}"] = _slope(train, small * config.batch_size, large * config.batch_size, device)
        log(f"measured: {name} training, {rates[f'train/{name}']:.0f} images/s")
    models = {scale.soap_model if SETTINGS[s].soap else scale.model for s in settings}
    for model_name in sorted(models):
        classifier = create_model(model_name).to(device).eval()
        cfg = model_config(model_name)
        head = ContrastiveHead(cfg.num_features, cfg.head_hidden, cfg.head_out).to(device)
        x = torch.rand(scale.static_batch, 3, 32, 32, device=device)
        y = torch.arange(scale.static_batch, device=device) % 10
        if any(not SETTINGS[s].soap for s in settings) and model_name == scale.model:
            if any(not SETTINGS[s].soap for s in to_train):
                hconfig = HeadTrainConfig(epochs=1, batch_size=scale.head["batch_size"], n_views=scale.head["views"],
                                          precision=scale.precision, bank_images=64)
                rates["head"] = _slope(lambda n: train_head(classifier, head, _random_set(n, device), tmp / f"h{n}",
                                                            hconfig, progress=False),
                                       small * hconfig.batch_size, large * hconfig.batch_size, device)
            rates["purify"] = _purify_rate(_contrastive(classifier, head, scale), x, y, device)
            rates["grad"] = _grad_rate(classifier, x, y, device)
            log(f"measured: purify {rates['purify']:.0f}, gradient {rates['grad']:.0f} images/s"
                + (f", head training {rates['head']:.0f}" if "head" in rates else ""))
        for name in settings:
            if SETTINGS[name].soap and model_name == scale.soap_model:
                rates[f"soap/{name}"] = _purify_rate(_soap(classifier, name, scale), x, y, device, oracle=True)
                rates.setdefault("grad_soap", _grad_rate(classifier, x, y, device))
                log(f"measured: {name} min-aux + oracle purify, {rates[f'soap/{name}']:.0f} images/s")
    if data is not None and (Path(data) / "test.zip").is_file():
        from ..data import load_cifar10

        rates["decode"] = 200 / _timed(lambda: load_cifar10(Path(data) / "test.zip", "test", limit=200), device)
    rates["startup"] = _timed(lambda: subprocess.run(
        [sys.executable, "-c", f"import torch, pyengine.cli, pyengine.train, pyengine.evaluation; "
                               f"torch.zeros(1, device='{device.type}')"], check=True), device)
    log(f"measured: a pyengine process starts in {rates['startup']:.1f} s")
    return rates


def _contrastive(classifier, head, scale: Scale):
    from ..purify import Purifier

    steps = {} if scale.purify_steps is None else {"steps": scale.purify_steps}
    return Purifier(classifier, head, negatives="batch", **steps)


def _soap(classifier, name: str, scale: Scale):
    from ..models.aux_heads import build_aux_head
    from ..soap import MinAuxPurifier, make_objective

    task = dict(zip(SETTINGS[name].train_flags[::2], SETTINGS[name].train_flags[1::2]))["--aux"]
    head = build_aux_head(task, classifier.num_features)
    head = head.to(next(classifier.parameters()).device).eval() if head is not None else None
    steps = {} if scale.purify_steps is None else {"steps": scale.purify_steps}
    return MinAuxPurifier(classifier, make_objective(task, classifier, head), **steps)


def _purify_rate(purifier, x, y, device, *, oracle: bool = False) -> float:
    from ..soap import oracle_purify

    run = (lambda: oracle_purify(purifier, x, y)) if oracle else (lambda: purifier.purify(x))
    run()  # the first call captures the CUDA graph
    return len(x) / _timed(run, device)


def _grad_rate(classifier, x, y, device) -> float:
    from ..attacks import PGD

    attack = PGD(classifier, steps=5)
    attack.perturb(x, y)
    return 5 * len(x) / _timed(lambda: attack.perturb(x, y), device)


# SOAP's Table 2 attacks (pyengine.attacks.paper), in gradients per image: C&W at most 5
# search steps x 500 Adam steps (early abort not counted); DeepFool one gradient per class
# per iteration, about 3 iterations of 10 classes plus a forward.
PAPER_GRADIENTS = {"soap-fgsm": 1, "soap-pgd20": 20, "soap-cw": 2500, "soap-deepfool": 33}


def attack_seconds(spec: str, n: int, rates: dict, *, setting: str, steps: int) -> float:
    """Estimated seconds of ``spec`` on ``n`` images of ``setting`` (the attack, then the
    purification of its output), ``steps`` the purifier's K (or SOAP's radii x T)."""
    soap = SETTINGS[setting].soap
    purify = n / rates[f"soap/{setting}" if soap else "purify"]
    grad = n / rates["grad_soap" if soap else "grad"]
    clean, robust = SETTINGS[setting].clean, max(SETTINGS[setting].robust, 0.1)
    if spec == "clean":
        return purify
    if spec.startswith("transfer-"):
        return attack_seconds(spec[len("transfer-"):], n, rates, setting=setting, steps=steps) + purify
    if spec == "autoattack":
        return (AUTOATTACK_GRADIENTS[0] * clean + AUTOATTACK_GRADIENTS[1] * SETTINGS[setting].robust) * grad + purify
    if spec in PAPER_GRADIENTS:
        return PAPER_GRADIENTS[spec] * grad + purify
    if spec == "fgsm" or _GRADIENT.match(spec):
        return (1 if spec == "fgsm" else int(_GRADIENT.match(spec)[1])) * grad + purify
    apgd, surrogate = _APGD.match(spec), _SURROGATE.match(spec)
    if apgd:
        surrogate_name, eot, base = "bpda", apgd[1] or "20", "apgd"
    elif surrogate:
        surrogate_name, eot, base = surrogate[1], surrogate[2], surrogate[3]
        eot = (eot or "20") if "-eot" in spec else "1"
    else:
        raise ValueError(f"no cost model for attack spec {spec!r}")
    per_step = {"bpda": purify + grad, "bpda-iterates": purify + steps * grad,
                "unrolled": 3 * purify + grad}[surrogate_name]  # unrolled: eager loop and its backward
    count = APGD_ITERATIONS * robust if base.startswith("apgd") else int(_GRADIENT.match(base)[1])
    return count * int(eot) * per_step + purify


def train_seconds(epochs: int, images: int, test_images: int, rate: float) -> tuple[float, float]:
    """(all epochs, one epoch) of training with a test-set evaluation after each epoch."""
    epoch = images / rate + test_images / (3 * rate)  # a forward pass: about a third of a training step
    return epochs * epoch, epoch


def eval_seconds(attacks: list[str], n: int, batch: int, rates: dict, *, setting: str, steps: int,
                 with_clean: bool) -> tuple[float, float]:
    """(all, the largest unit) of evaluating ``attacks`` on ``n`` images in batches."""
    costs = [attack_seconds(a, n, rates, setting=setting, steps=steps) for a in attacks]
    if with_clean:
        costs.append(attack_seconds("clean", n, rates, setting=setting, steps=steps))
    return sum(costs), max(costs, default=0.0) / math.ceil(n / batch)
