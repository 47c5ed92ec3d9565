"""One-call evaluation: ``evaluate`` (the CLI's ``pyengine eval``) and ``benchmark``."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from ..data import ImageSet
from ..distributed import barrier
from ..provenance import provenance, utc_now
from ..purify.steps import ProjectedStep, reverse_settings
from ..random import CounterRandom
from . import figures
from .report import summarize, write_report
from .runner import CLEAN, EvalConfig, Evaluation, load_records, plan_units, shard

FIGURE_EPS = [2 / 255, 4 / 255, 6 / 255, 8 / 255, 12 / 255]
FIGURE_EPS_V = [4 / 255, 8 / 255, 16 / 255, 24 / 255]
FIGURE_LAMBDAS = [0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0]


def default_attack_factory(purifier, config: EvalConfig):
    from ..attacks import build_attack

    return lambda spec: build_attack(spec, classifier=purifier.classifier, purifier=purifier,
                                     eps=config.eps, norm=config.norm, seed=config.seed)


def evaluate(purifier, data: ImageSet, config: EvalConfig, out: str | Path, *, rank: int = 0,
             world_size: int = 1, figure_images: int = 0, progress: bool = True,
             manifest: dict | None = None) -> dict | None:
    """Run (this rank's share of) the evaluation; rank 0 then merges every rank's units and
    writes the report and figures. Returns the summary on rank 0, None elsewhere.
    """
    out, started = Path(out), utc_now()
    if figure_images:
        figures.pyplot()  # matplotlib is optional: fail before the attacks run, not after
    if not config.purifier:
        config = replace(config, purifier=f"{type(purifier).__name__}({purifier.extra_repr()})")
    run = Evaluation(purifier, data, config, out, default_attack_factory(purifier, config), progress and rank == 0)
    for spec in config.attacks:  # a bad spec (unknown, or pgd99999999999) fails before any unit runs
        run.attack(spec)
    units = plan_units(config, len(data))
    run.run(shard(units, rank, world_size))
    barrier()
    if rank != 0:
        return None
    return finish(run, units, figure_images=figure_images, manifest=manifest, started=started)


def finish(run: Evaluation, units, *, figure_images: int = 0, manifest: dict | None = None,
           started: str | None = None) -> dict:
    missing = [u.filename for u in run.missing(units)]
    if missing:
        raise RuntimeError(f"evaluation incomplete, missing units: {missing[:5]} (+{max(0, len(missing) - 5)})")
    records = load_records(run.out, run.config)
    summary = summarize(records, run.config, manifest)
    # The images evaluated (the first n), by content: the record names no path.
    summary["provenance"] = provenance(data=run.data.subset(run.config.n), started=started,
                                       device=next(run.purifier.classifier.parameters()).device)
    write_report(run.out, summary)
    if figure_images:
        summary["figures"] = [str(p) for p in make_figures(run, records, figure_images, summary["provenance"])]
    return summary


def make_figures(run: Evaluation, records: dict, n: int, record: dict | None = None) -> list[Path]:
    """Figs. 2, 4, 5, 6, 7, 8 on the first ``n`` images (Fig. 2 uses every evaluated image);
    each figure's footer names ``record``'s commit, device and date."""
    from ..attacks import build_attack
    from ..soap import MinAuxPurifier

    config, purifier = run.config, run.purifier
    fig_dir = run.out / "figures"
    x = run.data.images[:n].float().div_(255)
    y = run.data.labels[:n]
    pgd = lambda eps: build_attack("pgd10", classifier=purifier.classifier, eps=eps,  # noqa: E731
                                   norm=config.norm, seed=config.seed)
    x_adv = pgd(config.eps).perturb(x, y, generator=CounterRandom(config.seed, torch.arange(n)))
    static = [a for a in config.attacks if a in records and not records[a][0]["adaptive"]]
    paths = []
    if static:
        loss_name = "L_aux" if isinstance(purifier, MinAuxPurifier) else "L_s"
        paths.append(figures.loss_histograms(records, static[0], fig_dir, loss_name=loss_name, record=record))
    paths.append(figures.accuracy_vs_steps(purifier, x, y, x_adv, fig_dir, seed=config.seed, record=record))
    paths.append(figures.robustness_vs_eps(purifier, x, y, pgd, FIGURE_EPS, fig_dir, seed=config.seed,
                                           record=record, follow_eps=follows_eps(purifier, config)))
    paths.append(figures.tradeoff_eps_v(purifier, x, y, x_adv, FIGURE_EPS_V, fig_dir, seed=config.seed,
                                        record=record))
    paths.append(figures.pca_trajectories(purifier, x, x_adv, fig_dir, seed=config.seed, record=record))
    aware = lambda lam: build_attack(f"aware-pgd10@{lam:g}", classifier=purifier.classifier,  # noqa: E731
                                     purifier=purifier, eps=config.eps, norm=config.norm, seed=config.seed)
    paths.append(figures.lambda_tradeoff(purifier, x, y, aware, FIGURE_LAMBDAS, fig_dir, seed=config.seed,
                                         record=record))
    return paths


def follows_eps(purifier, config: EvalConfig) -> bool:
    """Whether ``purifier`` is contrastive with eps_v = 2 eps and its step at the run's eps (the
    default when no eps_v is given): Fig. 6 then keeps that rule at every attack radius."""
    from ..soap import MinAuxPurifier

    step = getattr(purifier, "step", None)
    if isinstance(purifier, MinAuxPurifier) or not isinstance(step, ProjectedStep):
        return False
    want = reverse_settings(config.eps, config.norm)
    return step.norm == want["norm"] and math.isclose(step.eps, want["eps"]) and \
        math.isclose(step.step_size, want["step_size"])


def benchmark(defense, n_examples: int = 1000, threat_model: str = "Linf", eps: float = 8 / 255, *,
              data: ImageSet | None = None, data_dir: str | Path | None = None,
              attacks: tuple[str, ...] = ("pgd50", "bpda-pgd50", "transfer-pgd50"),
              batch_size: int = 100, seed: int = 0, out: str | Path | None = None) -> dict:
    """In the spirit of RobustBench's ``benchmark()``, for defenses RobustBench excludes
    (an inference-time optimisation loop). ``defense`` is a Purifier.

    Returns ``{"clean", "attacks": {name: acc}, "worst_case", "static_baseline"}`` where the
    static baseline is the undefended classifier's worst case over the static attacks.
    """
    import tempfile

    from ..data import load_cifar10

    norms = {"Linf": "linf", "L2": "l2"}
    if threat_model not in norms:
        raise ValueError(f"threat_model must be one of {sorted(norms)}, got {threat_model!r}")
    if data is None:
        if data_dir is None:
            raise ValueError("benchmark needs data (an ImageSet) or data_dir (a CIFAR-10 source)")
        data = load_cifar10(data_dir, "test", limit=n_examples)
    config = EvalConfig(attacks=list(attacks), eps=eps, norm=norms[threat_model], n=n_examples,
                        batch_size=batch_size, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        summary = evaluate(defense, data, config, out or tmp, progress=False)
    rows = summary["attacks"]
    return {
        "clean": rows[CLEAN]["purified"],
        "attacks": {name: row["purified"] for name, row in rows.items() if name != CLEAN},
        "worst_case": summary["worst_case"]["purified_all"],
        "static_baseline": summary["worst_case"]["standard"],
    }
