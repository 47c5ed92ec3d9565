"""docs/RESULTS.md from evaluation runs, with the papers' numbers beside ours.

Each setting of ``SETTINGS`` names the directory ``pyengine eval --out`` wrote for it (a
``results.json``) and the papers' reported accuracies (percent) for the attacks they report.
Settings whose run is missing are listed as not run, never filled in. Each run's device,
commit and date come from its provenance record (:mod:`pyengine.provenance`); runs written
before the record existed say ``not recorded``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..provenance import NOT_RECORDED, device_of, footer, provenance, record_of, relative_path
from .runner import CLEAN


# A setting's runs: the static attacks (``<name>/``) and the adaptive ones, which run the
# purifier in every attack step and so may cover fewer images (``<name>_adaptive/``).
RUNS = (("", "Static attacks (on the undefended classifier)"),
        ("_adaptive", "Adaptive attacks (on the defended classifier)"))
# SOAP's own Table 2 attacks, as its code ran them (``--attacks soap-table2``, pyengine.attacks.paper).
SOAP_PAPER_RUN = ("_paper", "SOAP's Table 2 attacks as its code ran them (on the undefended classifier): FGSM and "
                            "PGD-20 (2/255 steps, no random start) at L-inf 8/255, C&W and DeepFool at L2 2")


@dataclass(frozen=True)
class Setting:
    name: str  # directory under the runs root
    title: str
    source: str  # where the published numbers come from
    # attack spec -> (no defense, defended[, oracle]) as published; specs absent here get "—"
    published: dict[str, tuple[float, ...]] = field(default_factory=dict)
    runs: tuple[tuple[str, str], ...] = RUNS  # (directory suffix, title) of each run


SETTINGS = (
    Setting("standard", "Standard training, contrastive reverse attack (Mao et al.)",
            "Mao et al., Section 7.B (PGD)", {"pgd50": (0.0, 34.4)}),
    Setting("adversarial", "Adversarial training (FGSM-RS), contrastive reverse attack (Mao et al.)",
            "Mao et al., Table 1 (RO PreRes-18)",
            {"pgd50": (52.40, 54.59), "pgd200": (52.34, 54.62), "bim200": (52.32, 54.54), "cw200": (50.33, 53.48)}),
    Setting("adversarial_l2", "Adversarial training (FGSM-RS), L2 attacks at 256/255, reverse attack in L2 "
            "at eps_v 512/255 (Mao et al., Table 5)", "Mao et al., Table 5 (RO PreRes-18)",
            {"pgd200": (40.00, 41.98), "cw200": (38.31, 40.17)},
            (("", "Static L2 attacks (on the undefended classifier)"),)),
    # Shi et al.'s Table 2 (ResNet-18): rows pfy = 0 / min-aux / oracle, each beside the attack
    # the paper ran (soap-*), never beside ours (pgd50 starts at random and takes 50 steps).
    Setting("soap_lc", "SOAP, label consistency, min-aux (Shi et al.; ResNet-18 in the paper)",
            "Shi et al., Table 2 (LC, ResNet-18; no defense / min-aux / oracle)",
            {"clean": (86.36, 84.07, 94.06), "soap-fgsm": (22.81, 51.02, 59.45), "soap-pgd20": (0.15, 51.42, 62.29),
             "soap-cw": (0.00, 73.95, 86.94), "soap-deepfool": (8.52, 74.79, 88.88)},
            (*RUNS, SOAP_PAPER_RUN)),
    Setting("soap_rp", "SOAP, rotation prediction, min-aux (Shi et al.; ResNet-18 in the paper)",
            "Shi et al., Table 2 (RP, ResNet-18; no defense / min-aux / oracle)",
            {"clean": (73.64, 71.97, 87.57), "soap-fgsm": (5.77, 35.80, 37.60), "soap-pgd20": (0.47, 38.53, 39.40),
             "soap-cw": (0.00, 68.22, 79.80), "soap-deepfool": (13.65, 68.44, 84.34)},
            (*RUNS, SOAP_PAPER_RUN)),
)


def _pct(value) -> str:
    return "—" if value is None or value != value else f"{100 * value:.2f}"


def _published(values: tuple[float, ...] | None, index: int) -> str:
    return "—" if values is None or index >= len(values) else f"{values[index]:.2f}"


def run_markdown(setting: Setting, summary: dict) -> str:
    """One evaluation run of ``setting`` as a table, the papers' numbers beside ours."""
    rows = summary["attacks"]
    oracle = any(row.get("oracle") is not None for row in rows.values())
    head = "| attack | kind | ours: no defense | ours: purified |" + (" ours: oracle |" if oracle else "")
    head += " paper: no defense | paper: purified |" + (" paper: oracle |" if oracle else "")
    lines = [f"{summary['images']} CIFAR-10 test images (JPEG copy); `{summary['model'].get('architecture')}` "
             f"from `{summary['model'].get('path')}`; purifier `{summary['config'].get('purifier') or '?'}`; "
             f"published numbers: {setting.source}.", "", head,
             "|" + " --- |" * (head.count("|") - 1)]
    for name, row in rows.items():
        kind = "clean" if name == CLEAN else ("adaptive" if row["adaptive"] else "static")
        published = setting.published.get(name)
        cells = [name, kind, _pct(row["standard"]), _pct(row["purified"])]
        if oracle:
            cells.append(_pct(row.get("oracle")))
        cells += [_published(published, 0), _published(published, 1)]
        if oracle:
            cells.append(_published(published, 2))
        lines.append("| " + " | ".join(cells) + " |")
    worst = summary["worst_case"]
    lines += ["", f"Worst case per image: no defense {_pct(worst['standard'])}, purified under the static attacks "
                  f"{_pct(worst['purified_static'])}, under all attacks {_pct(worst['purified_all'])}.",
              "", f"Provenance: {footer(record_of(summary)) if record_of(summary) else NOT_RECORDED}."]
    return "\n".join(lines)


def results_markdown(root: str | Path, device: str, made_by: str = "scripts/reproduce_papers.sh", *,
                     settings: Sequence[str] | None = None, suffixes: Sequence[str] | None = None) -> str:
    """The body of docs/RESULTS.md from ``root/<setting><suffix>/results.json``: a table of
    the runs with the device, commit and date each ran at, then each setting's tables.
    ``made_by``: the script that ran them (it holds every command); ``settings`` and
    ``suffixes``: the settings and runs it makes (default: all of ``SETTINGS``), the others
    are left out rather than listed as not run."""
    root = Path(root)
    chosen = [s for s in SETTINGS if settings is None or s.name in settings]
    chosen = [replace(s, runs=tuple(r for r in s.runs if suffixes is None or r[0] in suffixes)) for s in chosen]
    runs = {f"{setting.name}{suffix}": root / f"{setting.name}{suffix}" / "results.json"
            for setting in chosen for suffix, _ in setting.runs}
    summaries = {key: json.loads(path.read_text()) for key, path in runs.items() if path.is_file()}
    parts = ["# Reproducing the papers on models trained here", "",
             f"Runs under `{relative_path(root)}` on {device}; made by `{made_by}`, which holds "
             "every command. Accuracies in percent.", "",
             "| run | images | device | commit | finished |", "| --- | ---: | --- | --- | --- |"]
    for name, summary in summaries.items():
        record = record_of(summary) or {}
        commit = str(record["commit"])[:7] if record.get("commit") not in (None, "unknown") else \
            record.get("commit", NOT_RECORDED)
        commit += " (with uncommitted changes)" if record.get("dirty") else ""
        parts.append(f"| {name} | {summary['images']} | {device_of(summary)} | {commit} | "
                     f"{record.get('finished', NOT_RECORDED)} |")
    parts.append("")
    for setting in chosen:
        parts += [f"### {setting.title}", ""]
        for suffix, title in setting.runs:
            name = f"{setting.name}{suffix}"
            body = run_markdown(setting, summaries[name]) if name in summaries else \
                f"Not run yet (no `{relative_path(runs[name])}`)."
            parts += [f"#### {title}", "", body, ""]
    page = provenance(device="cpu")
    parts.append(f"This page: `{page['command']}` · {footer(page)}.")
    return "\n".join(parts)
