"""Speed at equal robustness: step schedules against the paper's K = 40 (pyengine.evaluation.schedules).

Writes ``study.json`` (raw, saved after every comparison), ``table.md`` and
``robust_vs_speed.png`` (robust accuracy against purified images per second, the machine
named in it) under ``--out``.

    python3 scripts/step_schedule_study.py --n 2000 --out docs/results/<gpu>/step_schedules   # the full study
    SMOKE=1 python3 scripts/step_schedule_study.py --data DIR --out runs/smoke                # seconds

``SMOKE=1`` runs 4 images, PGD-2 and BPDA-PGD-2, a K = 4 reference against K = 2 and 1:
a check that the study runs end to end, not a measurement.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pyengine.data import load_cifar10  # noqa: E402
from pyengine.demo import DEFAULT_CHECKPOINT  # noqa: E402
from pyengine.evaluation import schedules as study_lib  # noqa: E402
from pyengine.evaluation.schedules import CANDIDATES, Schedule  # noqa: E402
from pyengine.provenance import relative_path  # noqa: E402
from pyengine.purify import Purifier  # noqa: E402

SMOKE = {"n": 4, "attacks": "pgd2,bpda-pgd2", "reference": "4@2/255", "schedules": "2@4/255,1@8/255",
         "batch_size": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="contrastive checkpoint (default: the shipped FGSM-RS tiny model)")
    p.add_argument("--data", default=os.environ.get("PYENGINE_DATA", "../shared/data/cifar10"),
                   help="CIFAR-10 folder or zip (default: $PYENGINE_DATA or ../shared/data/cifar10)")
    p.add_argument("--n", type=int, default=200, help="test images (default: %(default)s)")
    p.add_argument("--attacks", default="pgd10,bpda-pgd10", help="comma-separated attack specs")
    p.add_argument("--reference", default="40@2/255", help="the reference schedule K@STEP (default: the paper's)")
    p.add_argument("--schedules", default=",".join(f"{s.steps}@{s.step_size * 255:g}/255" for s in CANDIDATES),
                   help="candidate schedules K@STEP, comma-separated")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--note", default="", help="added to the plot's title, e.g. 'shared cores, indicative only'")
    p.add_argument("--out", type=Path, required=True, help="folder for study.json, table.md, robust_vs_speed.png")
    args = p.parse_args(argv)
    if os.environ.get("SMOKE") == "1":
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.n < 1 or args.batch_size < 1:
        p.error(f"--n and --batch-size must be >= 1, got {args.n} and {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reference = Schedule.parse(args.reference)
    candidates = tuple(Schedule.parse(s) for s in args.schedules.split(",") if s.strip())
    data = load_cifar10(args.data, "test", limit=args.n)

    def load(schedule: Schedule) -> Purifier:
        return Purifier.from_checkpoint(args.checkpoint, map_location=device, steps=schedule.steps,
                                        step_size=schedule.step_size)

    out = args.out
    save = lambda study: study_lib.write_json(study, out / "study.json")  # noqa: E731
    study = study_lib.run_study(load, data, schedules=candidates, reference=reference,
                                attacks=[a.strip() for a in args.attacks.split(",") if a.strip()],
                                batch_size=args.batch_size, seed=args.seed, on_result=save)
    study["checkpoint"] = relative_path(args.checkpoint)
    study["note"] = args.note
    save(study)
    text = study_lib.table(study)
    (out / "table.md").write_text(text + "\n")
    study_lib.plot(study, out / "robust_vs_speed.png", note=args.note)
    print(text)
    return study


if __name__ == "__main__":
    main()
