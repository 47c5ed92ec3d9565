"""``pyengine eval``: static and adaptive attacks on a purified classifier, resumable.

Work is cut into (attack, batch) units. Each unit writes one JSON file of per-image
records under ``<out>/units/``; a unit whose file parses, carries the config hash and holds
a record per image is skipped (any other is recomputed), so a killed run resumes where it
stopped, and several processes can share the units of one run (``shard``) with rank 0
merging the files into the report. The hash covers the images and labels evaluated and the
purifier's weights by content (``data_sha256``, ``weights_sha256``), so a rerun into the
same folder with other data or a replaced checkpoint is refused, naming what changed.

Randomness is counter-based (:class:`~pyengine.random.CounterRandom`): the defender's
draws for an image come from ``(seed, image index)``, and every attack receives that same
stream; an attack spec decides whether it replays the defender's draws (deterministic
evaluation) or forks fresh ones (``-eot`` specs). Results therefore do not depend on the
batch size or the number of processes.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from ..purify.steps import check_eps
from ..random import CounterRandom
from ..resume import claim, tensor_digest, weights_digest, write_atomic

CLEAN = "clean"


@dataclass
class EvalConfig:
    attacks: list[str]
    eps: float = 8 / 255
    norm: str = "linf"
    n: int = 1000
    batch_size: int = 100
    seed: int = 0
    checkpoint: str = ""  # where the weights came from: recorded, not hashed (weights_sha256 is)
    purifier: str = ""  # the purifier's type and settings (``evaluate`` fills it in)
    data_sha256: str = ""  # the first n images and labels, by content (``Evaluation`` fills it in)
    weights_sha256: str = ""  # the purifier's parameters and buffers (``Evaluation`` fills it in)

    UNHASHED = ("attacks", "checkpoint")  # see digest

    def __post_init__(self):
        if self.n < 1 or self.batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={self.n}, batch_size={self.batch_size}")
        # The bound depends on the norm: Mao et al.'s Table 5 attacks at L2 256/255.
        self.eps = check_eps(self.eps, self.norm)

    def digest(self) -> str:
        """Hash of the settings that decide a unit's numbers, the purifier's included, so a
        resume never mixes purifier settings, and the data and weights by content. The
        attack list is not one of them (a unit is one attack's), so adding an attack to a
        finished run computes only its units; nor is the checkpoint's path. The
        numbers do not depend on the batch size, but the unit files do, so a resume with
        another batch size is refused rather than mixed."""
        settings = {k: v for k, v in asdict(self).items() if k not in self.UNHASHED}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Unit:
    attack: str
    batch: int
    start: int
    stop: int

    @property
    def filename(self) -> str:
        return f"{self.attack}__{self.batch:05d}.json"


def plan_units(config: EvalConfig, n_images: int) -> list[Unit]:
    n = min(config.n, n_images)
    units = []
    for attack in [CLEAN, *config.attacks]:
        for b, start in enumerate(range(0, n, config.batch_size)):
            units.append(Unit(attack, b, start, min(n, start + config.batch_size)))
    return units


def shard(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """DistributedSampler semantics over units: every unit exactly once across ranks."""
    return units[rank::world_size]


AttackFactory = Callable[[str], "object"]


@dataclass
class Evaluation:
    """Runs units for one purifier; ``attack_factory(spec)`` builds an attack object with
    ``perturb(x, y, *, generator)`` and an ``adaptive`` flag."""

    purifier: nn.Module
    data: ImageSet
    config: EvalConfig
    out: Path
    attack_factory: AttackFactory
    progress: bool = True
    _attacks: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        n = min(self.config.n, len(self.data))
        # What is evaluated, by content: always computed here, never taken from the caller.
        self.config = replace(self.config, data_sha256=tensor_digest(self.data.images[:n], self.data.labels[:n]),
                              weights_sha256=weights_digest(self.purifier))
        claim(self.out, self.config.digest(), asdict(self.config), unhashed=self.config.UNHASHED)
        (self.out / "units").mkdir(exist_ok=True)

    def attack(self, spec: str):
        if spec not in self._attacks:
            self._attacks[spec] = self.attack_factory(spec)
        return self._attacks[spec]

    def missing(self, units: list[Unit]) -> list[Unit]:
        """The units without a valid result file: absent, corrupt, of another configuration
        or not one record per image (each file is written whole, see run)."""
        digest = self.config.digest()
        return [u for u in units
                if len(_read_unit(self.out / "units" / u.filename, digest) or ()) != u.stop - u.start]

    def run(self, units: list[Unit]) -> None:
        bar = tqdm(self.missing(units), desc="eval", disable=not self.progress, unit="batch")
        for unit in bar:
            bar.set_postfix(attack=unit.attack, images=f"{unit.start}-{unit.stop}")
            records = self.run_unit(unit)
            # A unit is either complete or absent: resume never reads half a file.
            write_atomic(self.out / "units" / unit.filename,
                         json.dumps({"digest": self.config.digest(), "records": records}))

    def run_unit(self, unit: Unit) -> list[dict]:
        device = next(self.purifier.classifier.parameters()).device
        x = self.data.images[unit.start:unit.stop].to(device).float().div_(255)
        y = self.data.labels[unit.start:unit.stop].to(device)
        indices = torch.arange(unit.start, unit.stop)
        defender = CounterRandom(self.config.seed, indices)
        classifier = self.purifier.classifier
        adaptive = False
        if unit.attack == CLEAN:
            x_in = x
        else:
            attack = self.attack(unit.attack)
            adaptive = bool(getattr(attack, "adaptive", False))
            x_in = attack.perturb(x, y, generator=CounterRandom(self.config.seed, indices))
        start = time.perf_counter()
        images, loss_after, oracle = self._purify(x_in, y, defender)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            standard = classifier(x_in).argmax(1) == y
            purified = classifier(images).argmax(1) == y
            loss_in = self.purifier.loss(x_in, generator=CounterRandom(self.config.seed, indices).fork(2))
        records = [{
            "index": int(i), "label": int(label), "adaptive": adaptive,
            "standard": bool(s), "purified": bool(p),
            "loss": float(li), "loss_purified": float(lp),
            "seconds": seconds / len(y),
        } for i, label, s, p, li, lp in zip(indices, y, standard, purified, loss_in, loss_after)]
        if oracle is not None:
            for record, correct in zip(records, oracle):
                record["oracle"] = bool(correct)
        return records

    def _purify(self, x: torch.Tensor, y: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Purified images, their L_s, and for SOAP's min-aux also the oracle's per-image
        correctness (an evaluation-only upper bound that looks at the labels)."""
        from ..soap import MinAuxPurifier, oracle_purify

        if isinstance(self.purifier, MinAuxPurifier):
            result = oracle_purify(self.purifier, x, y, generator=generator)
            return result.min_aux.images, result.min_aux.loss_trace[-1], result.correct
        result = self.purifier.purify(x, generator=generator, return_trace=True)
        return result.images, result.loss_trace[-1], None


def load_records(out: Path, config: EvalConfig) -> dict[str, list[dict]]:
    """All finished units' records, per attack, sorted by image index."""
    records: dict[str, list[dict]] = {}
    digest = config.digest()
    for path in sorted((Path(out) / "units").glob("*.json")):
        unit = _read_unit(path, digest)
        if unit is None:  # another configuration's, or corrupt (``missing`` recomputes planned units)
            continue
        attack = path.name.rsplit("__", 1)[0]
        records.setdefault(attack, []).extend(unit)
    for rows in records.values():
        rows.sort(key=lambda r: r["index"])
    return records


def _read_unit(path: Path, digest: str) -> list[dict] | None:
    """A unit file's records when it parses and carries ``digest``, else None."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    records = payload.get("records") if isinstance(payload, dict) and payload.get("digest") == digest else None
    return records if isinstance(records, list) and all(isinstance(r, dict) for r in records) else None
