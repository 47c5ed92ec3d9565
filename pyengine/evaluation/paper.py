"""docs/RESULTS.md from evaluation runs, with the papers' numbers beside ours.

Each setting of ``SETTINGS`` names the directory ``pyengine eval --out`` wrote for it (a
``results.json``) and the papers' reported accuracies (percent) for the attacks they report.
Settings whose run is missing are listed as not run, never filled in. Each run's device,
commit and date come from its provenance record (:mod:`pyengine.provenance`); runs written
before the record existed say ``not recorded``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..provenance import NOT_RECORDED, device_of, footer, provenance, record_of, relative_path
from .runner import CLEAN


@dataclass(frozen=True)
class Setting:
    name: str  # directory under the runs root
    title: str
    source: str  # where the published numbers come from
    # attack spec -> (no defense, defended[, oracle]) as published; specs absent here get "—"
    published: dict[str, tuple[float, ...]] = field(default_factory=dict)


SETTINGS = (
    Setting("standard", "Standard training, contrastive reverse attack (Mao et al.)",
            "Mao et al., Section 7.B (PGD)", {"pgd50": (0.0, 34.4)}),
    Setting("adversarial", "Adversarial training (FGSM-RS), contrastive reverse attack (Mao et al.)",
            "Mao et al., Table 1 (RO PreRes-18)",
            {"pgd50": (52.40, 54.59), "pgd200": (52.34, 54.62), "bim200": (52.32, 54.54), "cw200": (50.33, 53.48)}),
    Setting("soap_lc", "SOAP, label consistency, min-aux (Shi et al.; ResNet-18 in the paper)",
            "Shi et al., Table 2 (LC; no defense / min-aux / oracle; no attack, PGD)",
            # Their PGD is 20 steps of 2/255 from the input, no random start: our bim20.
            {"clean": (86.36, 84.07, 94.06), "pgd50": (0.15, 51.42, 62.29), "bim20": (0.15, 51.42, 62.29)}),
    Setting("soap_rp", "SOAP, rotation prediction, min-aux (Shi et al.; ResNet-18 in the paper)",
            "Shi et al., Table 2 (RP; no defense / min-aux / oracle; no attack, PGD)",
            {"clean": (73.64, 71.97, 87.57), "pgd50": (0.47, 38.53, 39.40), "bim20": (0.47, 38.53, 39.40)}),
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


# A setting's runs: the static attacks (``<name>/``) and the adaptive ones, which run the
# purifier in every attack step and so may cover fewer images (``<name>_adaptive/``).
RUNS = (("", "Static attacks (on the undefended classifier)"),
        ("_adaptive", "Adaptive attacks (on the defended classifier)"))


def results_markdown(root: str | Path, device: str, made_by: str = "scripts/reproduce_papers.sh") -> str:
    """The body of docs/RESULTS.md from ``root/<setting>[_adaptive]/results.json``: a table of
    the runs with the device, commit and date each ran at, then each setting's tables.
    ``made_by``: the script that ran them (it holds every command)."""
    root = Path(root)
    runs = {f"{setting.name}{suffix}": root / f"{setting.name}{suffix}" / "results.json"
            for setting in SETTINGS for suffix, _ in RUNS}
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
    for setting in SETTINGS:
        parts += [f"### {setting.title}", ""]
        for suffix, title in RUNS:
            name = f"{setting.name}{suffix}"
            body = run_markdown(setting, summaries[name]) if name in summaries else \
                f"Not run yet (no `{relative_path(runs[name])}`)."
            parts += [f"#### {title}", "", body, ""]
    page = provenance(device="cpu")
    parts.append(f"This page: `{page['command']}` · {footer(page)}.")
    return "\n".join(parts)
