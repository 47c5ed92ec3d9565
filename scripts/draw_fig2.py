"""Draw Fig. 2 (the purifier's loss of clean, attacked and purified images) again from
numbers already measured, without recomputing them:

    python3 scripts/draw_fig2.py runs/airbench_cpu/standard docs/figures/airbench94
    python3 scripts/draw_fig2.py docs/figures/reproduce_cpu/fig2_loss_histograms.json docs/figures/reproduce_cpu

SOURCE is an evaluation run folder (its per-image unit records and its results.json's
provenance; ``--attack`` picks the static attack, default pgd50) or a figure's JSON written
by an earlier draw (its numbers and its recorded provenance, "not recorded" when it has none).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyengine.evaluation.figures import loss_histograms


def _from_run(run: Path, attack: str) -> tuple[dict, dict | None]:
    records = {name: [r for unit in sorted((run / "units").glob(f"{name}__*.json"))
                      for r in json.loads(unit.read_text())["records"]]
               for name in ("clean", attack)}
    if not all(records.values()):
        raise SystemExit(f"{run} has no unit records for clean and {attack}")
    return records, json.loads((run / "results.json").read_text()).get("provenance")


def _from_figure(path: Path, attack: str) -> tuple[dict, dict | None]:
    data = json.loads(path.read_text())
    records = {"clean": [{"loss": v} for v in data["clean"]],
               attack: [{"loss": a, "loss_purified": p} for a, p in zip(data["attacked"], data["purified"])]}
    return records, data.get("provenance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--attack", default="pgd50")
    args = parser.parse_args()
    read = _from_run if args.source.is_dir() else _from_figure
    records, record = read(args.source, args.attack)
    print(loss_histograms(records, args.attack, args.out, record=record))


if __name__ == "__main__":
    main()
