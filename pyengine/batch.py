"""``pyengine purify``: purify a folder or zip of images in batches, on one or many processes.

Input: every ``*.png|jpg|jpeg`` under a folder or inside a zip, at any depth (hidden files
and ``__MACOSX`` folders skipped), sorted by relative path. Image ``i`` of that list draws
its randomness from ``CounterRandom(seed, [i])`` (random start and views of Algorithm 1),
never from its batch or process rank. Every image must have the size the model takes.
When every image sits in a folder named after a CIFAR-10 class (``.../cat/0001.png``), the
folder name is its label and the accuracy is reported.

Output under ``out``:

- ``images/<relative path>.png``: the purified images, rounded to 8 bits (predictions are
  made on the unrounded images);
- ``predictions.csv``: ``path, prediction[, label], loss_before, loss_after`` (L_s, Eq. 4
  of Mao et al., before and after purification), one row per image, sorted by path; a path
  beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` so
  that a spreadsheet shows it as text instead of running it as a formula;
- ``summary.json``: counts, accuracy, mean L_s, the output names relative to ``out`` and the
  provenance record (:mod:`pyengine.provenance`; the images identified by their contents);
- ``parts/batch_NNNNN.json``: one file per finished batch, written atomically; a rerun of
  the same command skips them, so a killed run resumes. A part counts only when it parses
  and every PNG it lists is there with the bytes it recorded; otherwise the batch is redone.
- ``config.json``: the run's key (:func:`pyengine.resume.claim`): the settings, the sha256
  of every input file's bytes and of the purifier's weights. A rerun into the same folder
  with other inputs, weights or settings is refused, naming what changed; the paths of the
  source and checkpoint are recorded but not keyed (moving them does not matter).

Under torchrun the batches are sharded across ranks like ``pyengine eval``'s units
(:func:`pyengine.evaluation.runner.shard`) and rank 0 merges the part files after a barrier.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .data import CIFAR10_CLASSES, IMAGE_SUFFIXES, DataError, _decode, read_member
from .image_folders import fit
from .distributed import barrier
from .evaluation.runner import shard
from .provenance import provenance, relative_path, utc_now
from .random import CounterRandom
from .resume import claim, weights_digest, write_atomic


def _hidden(name: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(name).parts)


@dataclass(frozen=True)
class ImageSource:
    """The images of a folder or zip: ``paths`` relative (POSIX), sorted; ``labels`` CIFAR-10
    class indices when every image's parent folder is a class name, else None."""

    location: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...] | None
    resize: int | None = None  # read() fits each image to resize x resize (shorter side, centre crop)

    @classmethod
    def open(cls, location: str | Path, *, class_names: tuple[str, ...] = CIFAR10_CLASSES,
             resize: int | None = None) -> "ImageSource":
        location = Path(location).expanduser()
        if not location.exists():
            raise DataError(f"image source not found: {location}")
        if location.is_file():
            if not zipfile.is_zipfile(location):
                raise DataError(f"{location} is a file but not a zip archive")
            try:
                with zipfile.ZipFile(location) as zf:
                    names = [n for n in zf.namelist() if not n.endswith("/")]
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise DataError(f"corrupt zip archive {location}: {err}") from err
        else:
            names = [p.relative_to(location).as_posix() for p in location.rglob("*") if p.is_file()]
        candidates = sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))
        for path in candidates:
            pure = PurePosixPath(path)
            if pure.is_absolute() or ".." in pure.parts or (location.is_file() and "\\" in path):
                raise DataError(f"{location}: member {path!r} would be written outside the output folder "
                                "(absolute path, '..' or backslash); refusing to read this archive")
        paths = tuple(n for n in candidates if not _hidden(n))
        if not paths:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {location}")
        outputs: dict[str, str] = {}
        for path in paths:
            target = output_name(path)
            if target in outputs:
                raise DataError(f"{location}: {outputs[target]!r} and {path!r} would both be written as {target!r}")
            outputs[target] = path
        parents = [PurePosixPath(p).parent.name for p in paths]
        labels = (tuple(class_names.index(c) for c in parents)
                  if all(c in class_names for c in parents) else None)
        return cls(location, paths, labels, resize)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def is_zip(self) -> bool:
        return self.location.is_file()

    def where(self, i: int) -> str:
        return f"{self.location}:{self.paths[i]}" if self.is_zip else str(self.location / self.paths[i])

    def check_sizes(self, expected: tuple[int, int] | None) -> tuple[int, int]:
        """Read every header; raise DataError naming the first image whose (H, W) differs from
        ``expected`` (None: from the first image). Returns the common (H, W)."""
        what = "the model takes"
        if expected is None:
            what = f"the first image ({self.paths[0]}) has"
        zf = zipfile.ZipFile(self.location) if self.is_zip else None
        try:
            for i, path in enumerate(self.paths):
                try:
                    stream = zf.open(path) if zf is not None else open(self.location / path, "rb")
                    with stream, Image.open(stream) as im:
                        w, h = im.size
                except (UnidentifiedImageError, OSError, SyntaxError, zipfile.BadZipFile, zlib.error,
                        Image.DecompressionBombError) as err:
                    raise DataError(f"corrupt image file {self.where(i)}: {err}") from err
                if expected is None:
                    expected = (h, w)
                if (h, w) != tuple(expected):
                    raise DataError(f"{self.where(i)} is {w}x{h} pixels but {what} {expected[1]}x{expected[0]}; "
                                    "resize the images first (pyengine purify --resize fits them to the model)")
        finally:
            if zf is not None:
                zf.close()
        return tuple(expected)

    def _raw(self, indices) -> list[bytes]:
        try:
            if self.is_zip:
                with zipfile.ZipFile(self.location) as zf:
                    return [read_member(zf, self.paths[i], self.where(i)) for i in indices]
            return [(self.location / self.paths[i]).read_bytes() for i in indices]
        except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as err:
            raise DataError(f"cannot read {self.location}: {err}") from err

    @functools.cached_property
    def file_digests(self) -> tuple[str, ...]:
        """sha256 of each image file's bytes, in ``paths`` order (read once, then cached)."""
        digests = []
        for start in range(0, len(self), 256):  # a bounded number of files in memory at once
            digests += [hashlib.sha256(raw).hexdigest() for raw in self._raw(range(start, min(len(self), start + 256)))]
        return tuple(digests)

    @property
    def digest(self) -> str:
        """16 hex digits of sha256 over every image's relative path and bytes: a run folder's key."""
        text = "".join(f"{path}\0{sha}\n" for path, sha in zip(self.paths, self.file_digests))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Images ``start:stop`` as uint8 Tensor[N, 3, H, W]; DataError when a file's bytes are
        no longer those :attr:`file_digests` recorded (the results would not match the key)."""
        raw = self._raw(range(start, stop))
        for k, data in enumerate(raw):
            if hashlib.sha256(data).hexdigest() != self.file_digests[start + k]:
                raise DataError(f"{self.where(start + k)} changed while it was being purified; run the command again")
        decoded = [_decode(r, self.where(start + k)) for k, r in enumerate(raw)]
        if self.resize is not None:
            decoded = [fit(image, self.resize) for image in decoded]
        return torch.from_numpy(np.stack(decoded))


def output_name(path: str) -> str:
    """Where the purified image of ``path`` goes, relative to ``<out>/images``."""
    return str(PurePosixPath(path).with_suffix(".png"))


def model_input_size(purifier) -> tuple[int, int] | None:
    """(H, W) the purifier takes (its checkpoint's), else a registered architecture's, else None."""
    from .models import model_config

    if getattr(purifier, "image_size", None) is not None:
        return tuple(purifier.image_size)
    name = getattr(purifier.classifier, "model_name", None)
    if name is None:
        return None
    try:
        return tuple(model_config(name).input_size[1:])
    except ValueError:
        return None


def purify_images(purifier, source: str | Path | ImageSource, out: str | Path, *, batch_size: int = 100,
                  seed: int = 0, rank: int = 0, world_size: int = 1, settings: dict | None = None,
                  progress: bool = True, resize: bool = False) -> dict | None:
    """Purify (this rank's share of) ``source`` into ``out``; rank 0 then merges every rank's
    batches into ``predictions.csv`` and ``summary.json``. Returns the summary on rank 0, None
    elsewhere. ``settings`` are recorded in ``out/config.json`` and join the key that guards
    ``out`` against mixing runs, but for the ``UNHASHED`` ones (e.g. ``checkpoint``, a path:
    the weights are keyed by content). ``resize`` fits every image to the model's size
    (shorter side resized, centre crop) instead of refusing other sizes. Labels come from
    folders named as the checkpoint's ``class_names`` (CIFAR-10's by default).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
    started = utc_now()
    size = model_input_size(purifier)
    if resize and (size is None or size[0] != size[1]):
        raise ValueError(f"resize needs a model of square input size, got {size}")
    names = tuple(_class_names(purifier))
    source = (source if isinstance(source, ImageSource)
              else ImageSource.open(source, class_names=names, resize=size[0] if resize else None))
    if source.resize is None:
        source.check_sizes(size)
    out = Path(out)
    recorded = {"batch_size": batch_size, "seed": seed, "purifier": purifier.extra_repr(), **(settings or {}),
                **({"resize": source.resize} if source.resize else {}),
                "inputs_sha256": source.digest, "weights_sha256": weights_digest(purifier)}
    hashed = {k: v for k, v in recorded.items() if k not in UNHASHED}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    claim(out, digest, {"source": relative_path(source.location), "images": len(source), **recorded},
          unhashed=UNHASHED)
    (out / "parts").mkdir(exist_ok=True)

    n = len(source)
    batches = [(b, start, min(n, start + batch_size)) for b, start in enumerate(range(0, n, batch_size))]
    todo = [b for b in shard(batches, rank, world_size) if _part(out, b[0], digest) is None]
    for b, start, stop in tqdm(todo, desc="purify", unit="batch", disable=not progress or rank != 0):
        rows = _purify_batch(purifier, source, start, stop, seed, out / "images")
        write_atomic(_part_path(out, b), json.dumps({"digest": digest, "rows": rows}))
    barrier()
    if rank != 0:
        return None
    return _merge(out, source, batches, digest, purifier, started)


# Where the inputs and the weights came from: recorded in config.json, not keyed (their
# contents are, as inputs_sha256 and weights_sha256).
UNHASHED = ("source", "images", "checkpoint")


def _purify_batch(purifier, source: ImageSource, start: int, stop: int, seed: int, image_dir: Path) -> list[dict]:
    device = next(purifier.classifier.parameters()).device
    x = source.read(start, stop).to(device).float().div_(255)
    indices = torch.arange(start, stop)
    result = purifier.purify(x, generator=CounterRandom(seed, indices), return_trace=True)
    with torch.no_grad():
        logits = purifier.classifier(result.images)
    before = purifier.loss(x, generator=CounterRandom(seed, indices).fork(2))
    pixels = result.images.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    rows = []
    for k, i in enumerate(range(start, stop)):
        target = image_dir / output_name(source.paths[i])
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixels[k]).save(buffer, format="PNG")
        write_atomic(target, buffer.getvalue())
        row = {"path": source.paths[i], "prediction": _class_names(purifier, logits.shape[1])[int(logits[k].argmax())],
               "loss_before": float(before[k]), "loss_after": float(result.loss_trace[-1, k]),
               "png_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
        if source.labels is not None:
            row["label"] = _class_names(purifier, logits.shape[1])[source.labels[i]]
        rows.append(row)
    return rows


def _merge(out: Path, source: ImageSource, batches: list, digest: str, purifier, started: str) -> dict:
    rows, missing = [], []
    for b, _, _ in batches:
        part = _part(out, b, digest)
        if part is None:
            missing.append(_part_path(out, b).name)
        else:
            rows.extend(part)
    if missing:
        raise RuntimeError(f"purification incomplete, missing batches: {missing[:5]} (+{max(0, len(missing) - 5)})")
    rows.sort(key=lambda r: r["path"])
    labelled = source.labels is not None
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "prediction", *(["label"] if labelled else []), "loss_before", "loss_after"])
    for r in rows:
        writer.writerow([csv_text(r["path"]), r["prediction"], *([r["label"]] if labelled else []),
                         f"{r['loss_before']:.6f}", f"{r['loss_after']:.6f}"])
    write_atomic(out / "predictions.csv", text.getvalue())
    summary = {
        "images": len(rows),
        "accuracy": sum(r["prediction"] == r["label"] for r in rows) / len(rows) if labelled else None,
        "loss_before": sum(r["loss_before"] for r in rows) / len(rows),
        "loss_after": sum(r["loss_after"] for r in rows) / len(rows),
        "predictions": "predictions.csv",  # relative to out: a result file names no machine's folders
        "images_dir": "images",
        "digest": digest,
        "provenance": provenance(data=source, started=started,
                                 device=next(purifier.classifier.parameters()).device),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def csv_text(value: str) -> str:
    """``value`` as a CSV cell that spreadsheets show as text: a leading ``'`` when it begins
    with a character that starts a formula (OWASP's CSV injection advice)."""
    return f"'{value}" if value.startswith(("=", "+", "-", "@", "\t", "\r")) else value


def _class_names(purifier, num_classes: int | None = None) -> list[str]:
    """The checkpoint's class names, else CIFAR-10's for 10 classes, else the indices."""
    names = (getattr(purifier, "manifest", None) or {}).get("class_names")
    if names:
        return list(names)
    if num_classes is None or num_classes == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return [str(k) for k in range(num_classes)]


def _part_path(out: Path, batch: int) -> Path:
    return out / "parts" / f"batch_{batch:05d}.json"


def _part(out: Path, batch: int, digest: str) -> list[dict] | None:
    """The rows of a finished batch of this configuration, or None (then the batch is redone):
    the part file must parse and every PNG it lists must hold the bytes it recorded."""
    try:
        payload = json.loads(_part_path(out, batch).read_text())
    except (OSError, ValueError):  # missing or corrupt: recompute rather than trust it
        return None
    rows = payload.get("rows") if isinstance(payload, dict) and payload.get("digest") == digest else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and _ROW_KEYS <= r.keys() for r in rows):
        return None
    for row in rows:
        try:
            png = (out / "images" / output_name(str(row["path"]))).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(png).hexdigest() != row["png_sha256"]:
            return None
    return rows


_ROW_KEYS = {"path", "prediction", "loss_before", "loss_after", "png_sha256"}
