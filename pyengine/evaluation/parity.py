"""Speed must not buy a weaker defense: the fast path against the fp32 reference path.

Both purifiers come from the same checkpoint and see the same adversarial examples (a
static attack on the undefended classifier) and the same draws (counter-based, keyed by
image index, so batching does not matter). The check passes when the robust-accuracy gain
of the fast path (purified minus undefended) is within ``tolerance`` points of the
reference path's gain.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..attacks import build_attack
from ..data import ImageSet
from ..loading import load_purifier
from ..models.checkpoint import read_manifest
from ..provenance import footer, provenance, record_of, utc_now
from ..purify import Purifier
from ..random import CounterRandom

REFERENCE_PATH = {"precision": "fp32", "cuda_graph": False, "channels_last": False}


def load_paths(checkpoint: str | Path, device: torch.device, **fast_settings) -> tuple[Purifier, Purifier]:
    """(reference, fast): the fp32 eager path and the default path of a contrastive checkpoint,
    or the path ``fast_settings`` (:func:`pyengine.load_purifier` keywords) describe."""
    if read_manifest(checkpoint).get("aux_task"):
        raise ValueError(f"{checkpoint} is a SOAP checkpoint: its purifiers run fp32 only, there is no fast path to check")
    reference = load_purifier(checkpoint, map_location=device, **REFERENCE_PATH)
    return reference, load_purifier(checkpoint, map_location=device, **fast_settings)


def _timed(device: torch.device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


@torch.no_grad()
def _correct(classifier, x, y) -> torch.Tensor:
    return (classifier(x).argmax(1) == y).cpu()


def check_parity(reference: Purifier, fast: Purifier, data: ImageSet, *, attack: str = "pgd10",
                 eps: float = 8 / 255, batch_size: int = 500, seed: int = 0, tolerance: float = 0.5,
                 robust_only: bool = False, progress: bool = True) -> dict:
    """Accuracies (percent) of the undefended classifier and both paths, clean and under
    ``attack``, the two robust-accuracy gains, their difference and the verdict.
    ``robust_only`` skips purifying the clean images (half the time; the verdict needs only
    the attacked ones). ``provenance`` holds the record of :mod:`pyengine.provenance`."""
    started = utc_now()
    device = next(reference.classifier.parameters()).device
    attacker = build_attack(attack, classifier=reference.classifier, eps=eps, seed=seed)
    splits = ("robust",) if robust_only else ("clean", "robust")
    correct = {key: [] for key in ("standard_clean", "standard_robust",
                                   *(f"{path}_{split}" for path in ("reference", "fast") for split in splits))}
    seconds = {"reference": 0.0, "fast": 0.0}
    max_difference = 0.0  # largest pixel difference between the two paths' purified images
    for start in tqdm(range(0, len(data), batch_size), desc="parity", disable=not progress):
        index = torch.arange(start, min(start + batch_size, len(data)))
        x = data.images[index].to(device).float() / 255
        y = data.labels[index].to(device)
        x_adv = attacker.perturb(x, y, generator=CounterRandom(seed, index))
        correct["standard_clean"].append(_correct(reference.classifier, x, y))
        correct["standard_robust"].append(_correct(reference.classifier, x_adv, y))
        inputs_of = {"clean": x, "robust": x_adv}
        purified = {}
        for name, purifier in (("reference", reference), ("fast", fast)):
            for split in splits:
                inputs = inputs_of[split]
                # The same draws for both paths (and a different stream for clean and attacked inputs).
                rng = CounterRandom(seed + (1 if split == "clean" else 2), index)
                purified[name, split], elapsed = _timed(device, lambda: purifier.purify(inputs, generator=rng))
                seconds[name] += elapsed
                correct[f"{name}_{split}"].append(_correct(purifier.classifier, purified[name, split], y))
        difference = (purified["fast", "robust"] - purified["reference", "robust"]).abs().max().item()
        max_difference = max(max_difference, 255 * difference)
    flags = {key: torch.cat(values) for key, values in correct.items()}
    acc = {key: 100 * value.float().mean().item() for key, value in flags.items()}
    # Images one path defends and the other does not: the gain difference is their balance,
    # and their total says how much of it chance alone could produce (a sign test).
    fast_only = int((flags["fast_robust"] & ~flags["reference_robust"]).sum())
    reference_only = int((flags["reference_robust"] & ~flags["fast_robust"]).sum())
    gain_reference = acc["reference_robust"] - acc["standard_robust"]
    gain_fast = acc["fast_robust"] - acc["standard_robust"]
    record = provenance(data=data, started=started, device=device)
    return {
        "n": len(data), "attack": attack, "eps": eps, "seed": seed, "tolerance_points": tolerance,
        "device": record["device"],  # on a CPU with its ISA flags: bf16 speed depends on them
        "reference_path": REFERENCE_PATH,
        "fast_path": {"precision": fast.precision, "cuda_graph": fast.cuda_graph, "channels_last": fast.channels_last,
                      "compile": fast.compile, "autocast_dtype": str(fast.autocast_dtype(device) or torch.float32)},
        "accuracy": acc, "gain_reference": gain_reference, "gain_fast": gain_fast,
        "gain_difference": gain_fast - gain_reference,
        "robust_disagreements": {"fast_only": fast_only, "reference_only": reference_only,
                                 "sign_test_p": sign_test_p(fast_only, reference_only)},
        "max_pixel_difference_255": max_difference,
        "purify_seconds": seconds,
        "passed": abs(gain_fast - gain_reference) <= tolerance,
        "provenance": record,
    }


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: how likely a split at least this uneven is if either path
    is equally likely to defend a disputed image."""
    n = wins + losses
    if n == 0:
        return 1.0
    extreme = min(wins, losses)
    tail = sum(math.comb(n, k) for k in range(extreme + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def markdown(report: dict) -> str:
    acc = report["accuracy"]
    fast = report["fast_path"]
    lines = [f"Parity of the fast path ({fast['autocast_dtype']}, CUDA graph {fast['cuda_graph']}, "
             f"channels_last {fast['channels_last']}, compile {fast.get('compile', False)}) "
             f"against the fp32 reference path: {report['n']} images, {report['attack']} at eps "
             f"{report['eps'] * 255:.0f}/255, device {report['device']}", "",
             "| path | clean | robust | robust gain | purify time |", "| --- | ---: | ---: | ---: | ---: |",
             f"| undefended | {acc['standard_clean']:.2f}% | {acc['standard_robust']:.2f}% | — | — |"]
    for name in ("reference", "fast"):
        clean = f"{acc[f'{name}_clean']:.2f}%" if f"{name}_clean" in acc else "—"
        lines.append(f"| {name} | {clean} | {acc[f'{name}_robust']:.2f}% | "
                     f"{report[f'gain_{name}']:+.2f} | {report['purify_seconds'][name]:.1f} s |")
    split = report["robust_disagreements"]
    lines += ["", f"Attacked images defended by one path only: fast {split['fast_only']}, reference "
                  f"{split['reference_only']} (sign test p = {split['sign_test_p']:.2f})."]
    verdict = "PASS" if report["passed"] else "FAIL"
    lines += ["", f"gain difference {report['gain_difference']:+.2f} points (tolerance ±{report['tolerance_points']}): "
              f"{verdict}"]
    if record_of(report):
        lines += ["", f"Provenance: {footer(record_of(report))}."]
    return "\n".join(lines)
