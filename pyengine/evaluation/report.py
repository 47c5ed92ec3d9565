"""Aggregate per-image records into the Table-1-style report (markdown + JSON)."""
from __future__ import annotations

import json
from pathlib import Path

from ..provenance import footer, record_of, relative_path, relative_text
from .runner import CLEAN, EvalConfig


def _accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _worst_case(records: dict[str, list[dict]], attacks: list[str], key: str) -> float:
    """Per image: correct only if correct on clean input and under every listed attack."""
    names = [CLEAN, *attacks]
    if not all(name in records for name in names):
        return float("nan")
    per_image = zip(*(records[name] for name in names))
    return _accuracy([all(r[key] for r in rows) for rows in per_image])


def summarize(records: dict[str, list[dict]], config: EvalConfig, manifest: dict | None = None) -> dict:
    clean = records.get(CLEAN, [])
    rows = {}
    for name in [CLEAN, *config.attacks]:
        recs = records.get(name, [])
        rows[name] = {
            "adaptive": bool(recs and recs[0]["adaptive"]),
            "images": len(recs),
            "standard": _accuracy([r["standard"] for r in recs]),
            "purified": _accuracy([r["purified"] for r in recs]),
            "loss": _mean([r["loss"] for r in recs]),
            "loss_purified": _mean([r["loss_purified"] for r in recs]),
            "oracle": _accuracy([r["oracle"] for r in recs]) if recs and "oracle" in recs[0] else None,
        }
    static = [a for a in config.attacks if not rows[a]["adaptive"]]
    adaptive = [a for a in config.attacks if rows[a]["adaptive"]]
    # The digest is of the settings as given; the report shows their paths relative, so that
    # a result file never names the folders of the machine that made it.
    shown = {**config.__dict__, "checkpoint": relative_path(config.checkpoint) if config.checkpoint else ""}
    model = {k: (manifest or {}).get(k) for k in ("architecture", "path", "dataset", "training")}
    model["path"] = relative_path(model["path"]) if model["path"] else model["path"]
    model["dataset"] = relative_text(model["dataset"]) if isinstance(model["dataset"], str) else model["dataset"]
    if isinstance(model["training"], dict) and isinstance(model["training"].get("command"), str):
        model["training"] = {**model["training"], "command": relative_text(model["training"]["command"])}
    return {
        "config": {"digest": config.digest(), **shown},
        "model": model,
        "images": len(clean),
        "attacks": rows,
        "worst_case": {
            "standard": _worst_case(records, static, "standard"),
            "purified_static": _worst_case(records, static, "purified"),
            "purified_all": _worst_case(records, config.attacks, "purified"),
            "static_attacks": static,
            "adaptive_attacks": adaptive,
        },
        "seconds_per_image": _mean([r["seconds"] for r in clean]),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _pct(value: float) -> str:
    return "—" if value != value else f"{100 * value:.1f}%"


def markdown_table(summary: dict) -> str:
    has_oracle = any(row["oracle"] is not None for row in summary["attacks"].values())
    oracle_head = " Oracle (upper bound, uses labels) |" if has_oracle else ""
    lines = [
        f"Images: {summary['images']} · eps {summary['config']['eps']:.4f} ({summary['config']['norm']}) · "
        f"seed {summary['config']['seed']} · "
        f"config {summary['config']['digest']}",
        "",
        "| attack | Standard | Purified (static attack) | Purified (adaptive attack) | loss attacked → purified |"
        + oracle_head,
        "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if has_oracle else ""),
    ]
    for name, row in summary["attacks"].items():
        standard = "—" if row["adaptive"] else _pct(row["standard"])
        static = "—" if row["adaptive"] else _pct(row["purified"])
        adaptive = _pct(row["purified"]) if row["adaptive"] else "—"
        oracle = f" {_pct(row['oracle'])} |" if has_oracle else ""
        lines.append(f"| {name} | {standard} | {static} | {adaptive} | "
                     f"{row['loss']:.3f} → {row['loss_purified']:.3f} |{oracle}")
    worst = summary["worst_case"]
    lines.append(f"| **worst case** | {_pct(worst['standard'])} | {_pct(worst['purified_static'])} | "
                 f"{_pct(worst['purified_all']) if worst['adaptive_attacks'] else '—'} | |" + (" |" if has_oracle else ""))
    lines += ["", "Worst case: an image counts only if it is classified correctly clean and under every "
              "attack of its column (the adaptive column takes every attack, static and adaptive).",
              "Loss: the purifier's objective, mean per image (L_s for the contrastive reverse attack, "
              "L_aux for SOAP).",
              f"Purification latency: {1000 * summary['seconds_per_image']:.1f} ms per image on this machine."]
    if summary["config"].get("purifier"):
        lines.append(f"Purifier: `{summary['config']['purifier']}`.")
    if record_of(summary):
        lines.append(f"Provenance: {footer(record_of(summary))}.")
    return "\n".join(lines)


def write_report(out: Path, summary: dict) -> tuple[Path, Path]:
    out = Path(out)
    table = out / "table.md"
    table.write_text(markdown_table(summary) + "\n")
    results = out / "results.json"
    results.write_text(json.dumps(summary, indent=2))
    return table, results
