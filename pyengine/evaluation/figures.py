"""The papers' figures as PNG files (Mao et al. Figs. 2, 4, 5, 6, 7, 8).

Each function measures what it plots on a small batch ``x, y`` with the given purifier and
writes one PNG plus the plotted numbers as JSON beside it, so a figure can be checked
without reading pixels. Randomness is counter-based with ``seed``. Titles state what is
plotted, never what a paper claims the plot shows. Each figure carries a footer (commit,
device, date) from ``record`` (:func:`pyengine.provenance.provenance`; made when not given),
which its JSON also holds.
"""
from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path
from typing import Callable

import torch

from ..provenance import footer, provenance
from ..purify.steps import reverse_settings
from ..random import CounterRandom

AttackAt = Callable[[float], object]  # eps -> attack with perturb(x, y, generator=...)
PLOTS_EXTRA = "pip install 'pyengine[plots]'"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend. matplotlib is an optional extra: a clear
    ImportError naming it when it is missing (checked before an evaluation starts)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f"the figures need matplotlib, an optional extra: {PLOTS_EXTRA}") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str, data: dict, record: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    record = record or provenance()
    lines = textwrap.wrap(footer(record), 110)  # a CPU's flags make it long: never cut off
    fig.tight_layout(rect=(0, 0.035 * len(lines), 1, 1))  # room for the footer
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=6, color="0.35", ha="left", va="bottom")
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    (out / f"{name}.json").write_text(json.dumps({**data, "provenance": record}, indent=2))
    return path


def _rng(seed: int, n: int) -> CounterRandom:
    return CounterRandom(seed, torch.arange(n))


@torch.no_grad()
def _accuracy(classifier, x, y) -> float:
    return (classifier(x).argmax(1) == y).float().mean().item()


def _attack_sweep(purifier, x, y, attacks: list, seed: int) -> dict[str, list[float]]:
    """Accuracy of the classifier (Standard) and of the defense (Purified) under each attack."""
    data = {"standard": [], "purified": []}
    for attack in attacks:
        x_adv = attack.perturb(x, y, generator=_rng(seed, len(y)))
        data["standard"].append(_accuracy(purifier.classifier, x_adv, y))
        data["purified"].append(_accuracy(purifier.classifier, purifier.purify(x_adv, generator=_rng(seed, len(y))), y))
    return data


def _plot_sweep(xs: list[float], data: dict, xlabel: str, out: Path, name: str, record: dict | None) -> Path:
    """Robust accuracy, Standard vs Purified, along one swept setting."""
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    for key, label in (("standard", "Standard"), ("purified", "Purified")):
        ax.plot(xs, [100 * a for a in data[key]], "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.legend()
    return _save(fig, out, name, data, record)


def _with(purifier, **changes):
    """A copy of ``purifier`` with other steps/step-rule settings (models shared, not copied)."""
    clone = copy.copy(purifier)
    step = copy.copy(purifier.step)
    for key, value in changes.items():
        setattr(clone if key == "steps" else step, key, value)
    clone.step = step
    return clone


def loss_histograms(records: dict[str, list[dict]], attack: str, out: Path, *, loss_name: str = "L_s",
                    record: dict | None = None) -> Path:
    """Fig. 2: the purifier's loss (``loss_name``: L_s, or SOAP's L_aux) of clean, attacked
    and purified-attacked images. The title quotes the measured means: whether attacks raise
    the loss and purification lowers it is for the data to show."""
    clean = [r["loss"] for r in records["clean"]]
    attacked = [r["loss"] for r in records[attack]]
    purified = [r["loss_purified"] for r in records[attack]]
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    for values, label in ((clean, "clean"), (attacked, f"attacked ({attack})"), (purified, "attacked, purified")):
        ax.hist(values, bins=30, alpha=0.55, label=label)
    ax.set_xlabel(f"loss {loss_name} per image")
    ax.set_ylabel("images")
    ax.legend()
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    ax.set_title(f"{loss_name} per image, mean: clean {mean(clean):.3f}, attacked {mean(attacked):.3f}, "
                 f"purified {mean(purified):.3f}", fontsize=9)
    return _save(fig, out, "fig2_loss_histograms", {"clean": clean, "attacked": attacked, "purified": purified},
                 record)


def accuracy_vs_steps(purifier, x, y, x_adv, out: Path, *, seed: int = 0, record: dict | None = None) -> Path:
    """Fig. 5: accuracy of the iterates x_k of purification, clean and attacked inputs."""
    curves = {}
    for name, inputs in (("clean", x), ("attacked", x_adv)):
        accs = []
        purifier.purify(inputs, generator=_rng(seed, len(y)),
                        on_step=lambda k, xk: accs.append(_accuracy(purifier.classifier, xk, y)))
        curves[name] = accs
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    for name, accs in curves.items():
        ax.plot(range(len(accs)), [100 * a for a in accs], label=name)
    ax.set_xlabel("purification step k")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    return _save(fig, out, "fig5_accuracy_vs_steps", curves, record)


def robustness_vs_eps(purifier, x, y, attack_at: AttackAt, eps_values: list[float], out: Path,
                      *, seed: int = 0, record: dict | None = None, follow_eps: bool = False) -> Path:
    """Fig. 6: robust accuracy vs attack radius, Standard vs Purified (static attack).

    ``follow_eps``: purify each radius with eps_v = 2 eps and its step (``reverse_settings``,
    as the paper's Fig. 6), else with ``purifier``'s own eps_v at every radius."""
    if follow_eps:
        data = {"eps": eps_values, "eps_v": [], "standard": [], "purified": []}
        for eps in eps_values:
            variant = _with(purifier, **reverse_settings(eps, purifier.step.norm))
            for key, values in _attack_sweep(variant, x, y, [attack_at(eps)], seed).items():
                data[key] += values
            data["eps_v"].append(variant.step.eps)
    else:
        data = {"eps": eps_values, **_attack_sweep(purifier, x, y, [attack_at(eps) for eps in eps_values], seed)}
    return _plot_sweep([255 * e for e in eps_values], data, "attack eps (x/255)", out, "fig6_robustness_vs_eps",
                       record)


def tradeoff_eps_v(purifier, x, y, x_adv, eps_v_values: list[float], out: Path, *, seed: int = 0,
                   record: dict | None = None) -> Path:
    """Fig. 7: clean vs robust accuracy as eps_v grows, against the random-noise reversal.

    The baseline adds uniform noise in the same eps_v ball and does not optimise (K = 0).
    """
    data = {"eps_v": eps_v_values, "ours": [], "random_noise": []}
    ratio = purifier.step.step_size / purifier.step.eps
    for eps_v in eps_v_values:
        for key, variant in (("ours", _with(purifier, eps=eps_v, step_size=ratio * eps_v)),
                             ("random_noise", _with(purifier, steps=0, eps=eps_v, random_start=True))):
            clean = _accuracy(variant.classifier, variant.purify(x, generator=_rng(seed, len(y))), y)
            robust = _accuracy(variant.classifier, variant.purify(x_adv, generator=_rng(seed, len(y))), y)
            data[key].append({"clean": clean, "robust": robust})
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    for key, label in (("ours", "reverse attack (ours)"), ("random_noise", "random noise")):
        ax.plot([100 * p["robust"] for p in data[key]], [100 * p["clean"] for p in data[key]], "o-", label=label)
    ax.set_xlabel("robust accuracy (%)")
    ax.set_ylabel("clean accuracy (%)")
    ax.legend()
    return _save(fig, out, "fig7_tradeoff_eps_v", data, record)


@torch.no_grad()
def _features(purifier, images) -> torch.Tensor:
    return purifier.classifier.forward_features(images)


def pca_trajectories(purifier, x, x_adv, out: Path, *, n_show: int = 6, seed: int = 0,
                     record: dict | None = None) -> Path:
    """Fig. 8: penultimate features projected by PCA, clean -> attacked -> purification iterates."""
    x, x_adv = x[:n_show], x_adv[:n_show]
    iterates = []
    purifier.purify(x_adv, generator=_rng(seed, len(x)), on_step=lambda k, xk: iterates.append(_features(purifier, xk)))
    clean, attacked = _features(purifier, x), _features(purifier, x_adv)
    stacked = torch.cat([clean, attacked, *iterates])
    mean = stacked.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(stacked - mean, full_matrices=False)
    project = lambda f: ((f - mean) @ v[:2].T).tolist()  # noqa: E731
    data = {"clean": project(clean), "attacked": project(attacked), "iterates": [project(f) for f in iterates]}
    fig, ax = pyplot().subplots(figsize=(5.5, 4.2))
    for i in range(len(x)):
        path = [data["attacked"][i]] + [step[i] for step in data["iterates"]]
        ax.plot([p[0] for p in path], [p[1] for p in path], "-", color=f"C{i}", alpha=0.6)
        ax.scatter(*data["clean"][i], marker="*", s=120, color=f"C{i}")
        ax.scatter(*data["attacked"][i], marker="x", s=60, color=f"C{i}")
    ax.set_title("clean (*), attacked (x), purification path (line)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return _save(fig, out, "fig8_pca_trajectories", data, record)


def lambda_tradeoff(purifier, x, y, attack_at_lambda: Callable[[float], object], lambdas: list[float],
                    out: Path, *, seed: int = 0, record: dict | None = None) -> Path:
    """Fig. 4 / Table 6: defense-aware attacks L_c - lambda * L_s, Standard vs Purified."""
    data = {"lambda": lambdas, **_attack_sweep(purifier, x, y, [attack_at_lambda(lam) for lam in lambdas], seed)}
    return _plot_sweep(lambdas, data, "lambda_s", out, "fig4_lambda_tradeoff", record)
