"""Speed at equal robustness: step schedules (K, step size) against the paper's K = 40.

A purification costs K forward-backward passes of the backbone, so fewer steps are faster
in proportion; the question is what they cost in robust accuracy. Each schedule is
checked as :mod:`.parity` checks a fast path: the same images, the same per-image draws,
the robust-accuracy difference to the reference schedule (the paper's K = 40, step
2/255, eps_v 16/255) with the sign test on the images only one of them defends, under a
static attack on the undefended classifier and an adaptive one (BPDA) through each
schedule's own defense. Both use the same purification path (precision, layout), so only
the schedule differs.

A schedule may replace the default only when it passes on at least
:data:`IMAGES_TO_ADOPT` images under both attacks; :func:`run_study` says so per schedule.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import ImageSet
from ..provenance import device_name, provenance, utc_now
from ..purify import Purifier
from ..resume import write_atomic
from .figures import pyplot
from .parity import compare_paths, describe_path, evaluate_path

IMAGES_TO_ADOPT = 2000


@dataclass(frozen=True)
class Schedule:
    """K steps of ``step_size`` (pixel units, [0, 1] images)."""

    steps: int
    step_size: float

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")

    @property
    def label(self) -> str:
        return f"K={self.steps}, a={self.step_size * 255:.3g}/255"

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        """``"10@4/255"`` (K @ step size; the size a number or ``p/q``) -> Schedule(10, 4/255)."""
        steps, sep, size = text.partition("@")
        if not sep:
            raise ValueError(f"schedule must read K@STEP_SIZE, e.g. 10@4/255, got {text!r}")
        try:
            top, _, bottom = size.partition("/")
            value = float(top) / (float(bottom) if bottom else 1.0)
            return cls(int(steps), value)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"schedule must read K@STEP_SIZE, e.g. 10@4/255, got {text!r}") from None


PAPER = Schedule(40, 2 / 255)
# Fewer steps, some with larger steps so that K * a still crosses the 16/255 ball from the
# random start (32/255 at most): K * a = 80, 80, 40, 40 and 40 (/255), against the paper's 80.
CANDIDATES = (Schedule(20, 4 / 255), Schedule(10, 8 / 255), Schedule(10, 4 / 255), Schedule(5, 8 / 255),
              Schedule(20, 2 / 255))


def run_study(load: Callable[[Schedule], Purifier], data: ImageSet, *, schedules=CANDIDATES,
              reference: Schedule = PAPER, attacks=("pgd10", "bpda-pgd10"), eps: float = 8 / 255,
              batch_size: int = 100, seed: int = 0, tolerance: float = 0.5, progress: bool = True,
              on_result: Callable[[dict], None] | None = None) -> dict:
    """Every schedule against ``reference`` under every attack; -> the study as a JSON-able dict.

    Args:
        load: schedule -> purifier (e.g. ``Purifier.from_checkpoint(path, steps=, step_size=)``);
            every purifier must share everything but the schedule.
        attacks: specs of :func:`pyengine.attacks.build_attack`, static or adaptive.
        on_result: called with the study so far after each comparison (to save partial work).

    Images per second are the purification's own (attack time excluded), pooled over the
    attacks; ``adoptable`` holds where a schedule passed under every attack on at least
    :data:`IMAGES_TO_ADOPT` images.
    """
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    if reference in schedules:
        raise ValueError(f"the reference schedule {reference.label} is among the candidates")
    started = utc_now()
    options = dict(eps=eps, batch_size=batch_size, seed=seed, robust_only=True, progress=progress)
    ref_purifier = load(reference)
    device = next(ref_purifier.classifier.parameters()).device
    study = {"n": len(data), "eps": eps, "seed": seed, "tolerance_points": tolerance, "attacks": list(attacks),
             "images_to_adopt": IMAGES_TO_ADOPT, "machine": device_name(device),
             "path": {k: v for k, v in describe_path(ref_purifier, device).items()
                      if k not in ("steps", "step_size")},
             "reference": _entry(reference), "schedules": [_entry(s) for s in schedules]}
    seconds = {s: 0.0 for s in (reference, *schedules)}
    for attack in attacks:
        static_cache: dict = {}
        ref = evaluate_path(ref_purifier, data, attack=attack, desc=f"{attack} {reference.label}",
                            static_cache=static_cache, **options)
        seconds[reference] += ref["seconds"]
        study["reference"]["robust_accuracy"][attack] = 100 * ref["correct"]["robust"].float().mean().item()
        study["reference"]["undefended_accuracy"][attack] = (
            100 * ref["correct"]["standard_robust"].float().mean().item())
        for schedule, entry in zip(schedules, study["schedules"]):
            result = evaluate_path(load(schedule), data, attack=attack, desc=f"{attack} {schedule.label}",
                                   static_cache=static_cache, **options)
            seconds[schedule] += result["seconds"]
            comparison = compare_paths(ref, result, tolerance)
            entry["robust_accuracy"][attack] = comparison["accuracy"]["fast_robust"]
            entry["comparison"][attack] = {k: comparison[k] for k in
                                           ("gain_difference", "robust_disagreements", "passed")}
            _rates(study, seconds, (reference, *schedules))
            if on_result is not None:
                on_result(study)
    for entry in study["schedules"]:
        passed = all(entry["comparison"][a]["passed"] for a in attacks)
        entry["passed_all"] = passed
        entry["adoptable"] = passed and len(data) >= IMAGES_TO_ADOPT
    study["provenance"] = provenance(data=data, started=started, device=device)
    return study


def _entry(schedule: Schedule) -> dict:
    return {"steps": schedule.steps, "step_size": schedule.step_size, "label": schedule.label,
            "robust_accuracy": {}, "undefended_accuracy": {}, "comparison": {}}


def _rates(study: dict, seconds: dict, schedules) -> None:
    """Purified images per second of each schedule so far (its attacked images / its purify time)."""
    for schedule, entry in zip(schedules, (study["reference"], *study["schedules"])):
        if seconds[schedule] > 0 and entry["robust_accuracy"]:
            entry["images_per_second"] = study["n"] * len(entry["robust_accuracy"]) / seconds[schedule]
            entry["purify_seconds"] = seconds[schedule]


def table(study: dict) -> str:
    """The study as a markdown table: robust accuracy per attack with the difference to the
    reference and its sign test, images/s and the speed-up."""
    attacks = study["attacks"]
    ref = study["reference"]
    head = ["schedule", *(f"robust, {a}" for a in attacks), "images/s", "speed-up", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
    ref_rate = ref.get("images_per_second")
    cells = [f"{ref['label']} (reference)", *(f"{ref['robust_accuracy'][a]:.2f}%" if a in ref["robust_accuracy"]
                                          else "—" for a in attacks),
             _rate(ref_rate), "1.00x", "reference"]
    lines.append("| " + " | ".join(cells) + " |")
    for entry in study["schedules"]:
        cells = [entry["label"]]
        for a in attacks:
            c = entry["comparison"].get(a)
            if c is None:
                cells.append("—")
                continue
            split = c["robust_disagreements"]
            cells.append(f"{entry['robust_accuracy'][a]:.2f}% ({c['gain_difference']:+.2f}; "
                         f"{split['fast_only']}/{split['reference_only']}, p = {split['sign_test_p']:.2f})")
        rate = entry.get("images_per_second")
        cells += [_rate(rate), f"{rate / ref_rate:.2f}x" if rate and ref_rate else "—", _verdict(entry, study)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{study['n']} CIFAR-10 test images, eps {study['eps'] * 255:.0f}/255; each cell: robust accuracy "
              f"(difference to the paper's schedule in points; images defended by this schedule only / by the "
              f"paper's only, sign test p). Tolerance ±{study['tolerance_points']} points; a schedule may replace "
              f"the default only after passing on at least {study['images_to_adopt']} images under every attack. "
              f"Machine: {study['machine']}."]
    return "\n".join(lines)


def _rate(rate: float | None) -> str:
    return "—" if not rate else f"{rate:.3g}"


def _verdict(entry: dict, study: dict) -> str:
    done = [entry["comparison"][a]["passed"] for a in study["attacks"] if a in entry["comparison"]]
    if len(done) < len(study["attacks"]):
        return "incomplete"
    if not all(done):
        return "fails parity"
    return "passes" if study["n"] >= study["images_to_adopt"] else "passes (too few images to adopt)"


def plot(study: dict, path: str | Path, *, note: str = "") -> Path:
    """Robust accuracy against purified images per second, one series per attack, the
    machine (and ``note``, e.g. "shared cores, indicative only") in the title."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    entries = [study["reference"], *study["schedules"]]
    for attack, marker in zip(study["attacks"], "os^Dv"):
        points = [(e["images_per_second"], e["robust_accuracy"][attack], e["label"]) for e in entries
                  if e.get("images_per_second") and attack in e["robust_accuracy"]]
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker, label=attack)
        for x, y, label in points:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("purified images per second")
    ax.set_ylabel("robust accuracy (%)")
    title = f"Step schedules, {study['n']} images: {study['machine']}"
    ax.set_title(title + (f"\n({note})" if note else ""), fontsize=8)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(study: dict, path: str | Path) -> Path:
    """Write ``study`` to ``path`` atomically (a partial study saved mid-run stays readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(study, indent=2) + "\n")
    return path
