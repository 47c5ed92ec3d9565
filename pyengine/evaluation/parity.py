"""Speed must not buy a weaker defense: the fast path against the fp32 reference path.

Both purifiers come from the same checkpoint and see the same adversarial examples (a
static attack on the undefended classifier) and the same draws (counter-based, keyed by
image index, so batching does not matter). The check passes when the robust-accuracy gain
of the fast path (purified minus undefended) is within ``tolerance`` points of the
reference path's gain. Under an adaptive attack (BPDA, ...) each path is attacked through
its own defense; the verdict compares their robust accuracies. The same check compares a
step schedule (K, step size) with the paper's (:mod:`.schedules`).
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

REFERENCE_PATH = {"precision": "fp32", "cuda_graph": False, "channels_last": False, "fold_batchnorm": False}


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


def evaluate_path(purifier: Purifier, data: ImageSet, *, attack: str = "pgd10", eps: float = 8 / 255,
                  batch_size: int = 500, seed: int = 0, robust_only: bool = False, progress: bool = True,
                  desc: str = "parity", static_cache: dict | None = None) -> dict:
    """One path's per-image results on ``data``: ``correct`` (BoolTensor[n] per key:
    ``standard_clean``, ``standard_robust``, ``clean`` unless ``robust_only``, ``robust``),
    ``seconds`` (purification time), ``purified`` (the attacked images purified, on the
    CPU, to compare two paths' outputs) and ``mean_steps`` (steps per attacked image: fewer
    than K with early exit).

    A static ``attack`` is made on the undefended classifier, so every path sees the same
    adversarial images; an adaptive one (``bpda-pgd10``, ...) attacks this path's defense,
    with the draws the defense then purifies with (the "deterministic" evaluation), and
    ``standard_robust`` is the undefended classifier on this path's adversarial images.
    ``static_cache`` (a dict shared by the paths compared) keeps a static attack's images
    from the first path, so a path whose classifier runs in another layout or precision
    (channels_last, compiled) is not handed slightly different ones. Purification draws are
    counter-based per image: paths evaluated separately see the same draws."""
    device = next(purifier.classifier.parameters()).device
    attacker = build_attack(attack, classifier=purifier.classifier, purifier=purifier, eps=eps, seed=seed + 2)
    adaptive = bool(getattr(attacker, "adaptive", False))
    # An adaptive attack replays the draws that purify the attacked images (seed + 2 below).
    attack_seed = seed + 2 if adaptive else seed
    splits = ("robust",) if robust_only else ("clean", "robust")
    correct = {key: [] for key in ("standard_clean", "standard_robust", *splits)}
    seconds, purified_robust, steps_taken = 0.0, [], []
    # The trace (one more loss evaluation) only where it says something: early exit's steps.
    trace = purifier.early_exit is not None
    for start in tqdm(range(0, len(data), batch_size), desc=desc, disable=not progress):
        index = torch.arange(start, min(start + batch_size, len(data)))
        x = data.images[index].to(device).float() / 255
        y = data.labels[index].to(device)
        if adaptive or static_cache is None:
            x_adv = attacker.perturb(x, y, generator=CounterRandom(attack_seed, index))
        else:
            key = (attack, eps, seed, start, len(index))
            if key not in static_cache:
                static_cache[key] = attacker.perturb(x, y, generator=CounterRandom(attack_seed, index))
            x_adv = static_cache[key]
        correct["standard_clean"].append(_correct(purifier.classifier, x, y))
        correct["standard_robust"].append(_correct(purifier.classifier, x_adv, y))
        for split in splits:
            inputs = x if split == "clean" else x_adv
            # A different stream for clean and attacked inputs.
            rng = CounterRandom(seed + (1 if split == "clean" else 2), index)
            result, elapsed = _timed(device, lambda: purifier.purify(inputs, generator=rng, return_trace=trace))
            out = result.images if trace else result
            seconds += elapsed
            correct[split].append(_correct(purifier.classifier, out, y))
            if split == "robust":
                purified_robust.append(out.detach().float().cpu())
                steps_taken.append(result.steps_taken if trace else torch.full((len(index),), purifier.steps))
    return {"correct": {key: torch.cat(values) for key, values in correct.items()}, "seconds": seconds,
            "purified": torch.cat(purified_robust), "adaptive": adaptive,
            "mean_steps": torch.cat(steps_taken).float().mean().item()}


def compare_paths(reference: dict, fast: dict, tolerance: float = 0.5) -> dict:
    """Two :func:`evaluate_path` results on the same images -> accuracies (percent), the
    robust-accuracy gains over the undefended classifier, their difference, the images only
    one path defends with their sign test, and the verdict (difference within ``tolerance``)."""
    ref, new = reference["correct"], fast["correct"]
    if ref["robust"].shape != new["robust"].shape:
        raise ValueError(f"the paths were evaluated on {ref['robust'].numel()} and {new['robust'].numel()} images")
    flags = {"standard_clean": ref["standard_clean"], "standard_robust": ref["standard_robust"]}
    for name, result in (("reference", ref), ("fast", new)):
        flags.update({f"{name}_{split}": result[split] for split in ("clean", "robust") if split in result})
    acc = {key: 100 * value.float().mean().item() for key, value in flags.items()}
    # Images one path defends and the other does not: the gain difference is their balance,
    # and their total says how much of it chance alone could produce (a sign test).
    fast_only = int((new["robust"] & ~ref["robust"]).sum())
    reference_only = int((ref["robust"] & ~new["robust"]).sum())
    # Under an adaptive attack each path has its own adversarial images; the gain of each is
    # over the undefended classifier on the reference path's, so the difference stays the balance.
    gain_reference = acc["reference_robust"] - acc["standard_robust"]
    gain_fast = acc["fast_robust"] - acc["standard_robust"]
    difference = (fast["purified"] - reference["purified"]).abs().max().item()
    return {
        "accuracy": acc, "gain_reference": gain_reference, "gain_fast": gain_fast,
        "gain_difference": gain_fast - gain_reference,
        "robust_disagreements": {"fast_only": fast_only, "reference_only": reference_only,
                                 "sign_test_p": sign_test_p(fast_only, reference_only)},
        "max_pixel_difference_255": 255 * difference,
        "purify_seconds": {"reference": reference["seconds"], "fast": fast["seconds"]},
        "fast_mean_steps": fast["mean_steps"],
        "passed": abs(gain_fast - gain_reference) <= tolerance,
    }


def describe_path(purifier: Purifier, device: torch.device) -> dict:
    """The settings that make a path: precision, CUDA graph, layout, compilation, batch-norm
    folding, early exit, schedule."""
    return {"precision": purifier.precision, "cuda_graph": purifier.cuda_graph,
            "channels_last": purifier.channels_last, "compile": purifier.compile,
            "fold_batchnorm": purifier.fold_batchnorm,
            "early_exit": None if purifier.early_exit is None else vars(purifier.early_exit),
            "autocast_dtype": str(purifier.autocast_dtype(device) or torch.float32),
            "steps": purifier.steps, "step_size": purifier.step.step_size, "eps": purifier.step.eps}


def check_parity(reference: Purifier, fast: Purifier, data: ImageSet, *, attack: str = "pgd10",
                 eps: float = 8 / 255, batch_size: int = 500, seed: int = 0, tolerance: float = 0.5,
                 robust_only: bool = False, progress: bool = True) -> dict:
    """Accuracies (percent) of the undefended classifier and both paths, clean and under
    ``attack`` (static, or adaptive: see :func:`evaluate_path`), the two robust-accuracy
    gains, their difference and the verdict. ``robust_only`` skips purifying the clean
    images (half the time; the verdict needs only the attacked ones). ``provenance`` holds
    the record of :mod:`pyengine.provenance`. A fast path with ``compile`` is warmed up for
    ``batch_size`` first (not timed: a serving process pays it once)."""
    started = utc_now()
    device = next(reference.classifier.parameters()).device
    if fast.compile:
        fast.warmup([min(batch_size, len(data))], image_size=tuple(data.images.shape[-2:]))
    options = dict(attack=attack, eps=eps, batch_size=batch_size, seed=seed, robust_only=robust_only,
                   progress=progress, static_cache={})
    ref = evaluate_path(reference, data, desc="parity: reference", **options)
    new = evaluate_path(fast, data, desc="parity: fast", **options)
    record = provenance(data=data, started=started, device=device)
    return {
        "n": len(data), "attack": attack, "adaptive": ref["adaptive"], "eps": eps, "seed": seed,
        "tolerance_points": tolerance,
        "device": record["device"],  # on a CPU with its ISA flags: bf16 speed depends on them
        "reference_path": describe_path(reference, device), "fast_path": describe_path(fast, device),
        **compare_paths(ref, new, tolerance),
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
    ref = report["reference_path"]
    schedule = (f", K = {fast['steps']} at step {fast['step_size'] * 255:.3g}/255 against K = {ref['steps']} at "
                f"{ref['step_size'] * 255:.3g}/255" if "steps" in fast and
                (fast["steps"], fast["step_size"]) != (ref["steps"], ref["step_size"]) else "")
    exit_rule = fast.get("early_exit")
    early = (f", early exit {exit_rule['tolerance']:g} over {exit_rule['window']} steps "
             f"(mean {report['fast_mean_steps']:.1f} of K = {fast['steps']} steps)") if exit_rule else ""
    lines = [f"Parity of the fast path ({fast['autocast_dtype']}, CUDA graph {fast['cuda_graph']}, "
             f"channels_last {fast['channels_last']}, compile {fast.get('compile', False)}, "
             f"BN folding {fast.get('fold_batchnorm', False)}{early}{schedule}) "
             f"against the reference path ({ref.get('autocast_dtype', 'torch.float32')}): {report['n']} images, "
             f"{report['attack']} at eps "
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
