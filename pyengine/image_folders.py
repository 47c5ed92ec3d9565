"""Labelled images of any classes and size: ImageFolder layout in a folder or a zip.

``load_images(source, image_size, split=None)`` reads ``<root>/[<split>/]<class>/<image>``
(a folder, or a zip holding that layout), with any number of classes named by their folders
(labels follow the sorted folder names, as torchvision's ImageFolder), resizes each image's
shorter side to ``image_size`` and crops the centre square (as ``Resize`` + ``CenterCrop``).
CIFAR-10's batches folder and cache files are one more source (:func:`pyengine.data.load_cifar10`).
Images decode as in :mod:`pyengine.data` (16-bit and transparent images, capped zip members).
The result is an :class:`~pyengine.data.ImageSet` of uint8 [N, 3, S, S] with ``class_names``;
its ``batches`` give float tensors in [0, 1].
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import (CIFAR10_CLASSES, IMAGE_SUFFIXES, DataError, ImageSet, _decode, _interleave_order, check_limit,
                   load_cifar10, read_member)

MAX_IMAGE_SIZE = 1024


def load_images(source: str | Path, image_size: int, split: str | None = None, *, limit: int | None = None,
                classes: list[str] | tuple[str, ...] | None = None) -> ImageSet:
    """Images of ``source`` as uint8 [N, 3, image_size, image_size] with labels and class names.

    Args:
        source: a folder or zip in ImageFolder layout, or a CIFAR-10 batches folder / cache file.
        image_size: the side of the square images returned (shorter side resized, centre crop).
        split: a first-level folder such as ``"train"`` or ``"test"``; needed when the source
            holds several.
        limit: keep this many images, in interleaved class order (class-balanced prefixes); only
            those are decoded.
        classes: keep these classes only, labelled 0.. in this order (default: every folder).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer in [8, {MAX_IMAGE_SIZE}], got {image_size!r}")
    check_limit(limit)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"image source not found: {path}")
    if _is_cifar_batches(path):
        if split is None:
            raise DataError(f"{path} holds CIFAR-10's train and test splits: pass split")
        data = load_cifar10(path, split)
        return _select(data.labels.tolist(), list(CIFAR10_CLASSES), classes, limit,
                       lambda i: data.images[i].numpy(), image_size, path)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is a file but not a zip archive")
        try:
            with zipfile.ZipFile(path) as zf:
                members, labels, names = _zip_members(zf, path, split)
                return _select(labels, names, classes, limit,
                               lambda i: _decode(read_member(zf, members[i], f"{path}:{members[i]}"),
                                                 f"{path}:{members[i]}"), image_size, path)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise DataError(f"corrupt zip archive {path}: {err}") from err
    root = path
    if split is not None:
        root = path / split
        if not root.is_dir():
            raise DataError(f"{path} has no {split!r} folder (it holds {_listing(path)})")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(names):
        found = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files and split is None and any(any((root / n).glob(f"*/*{s}")) for n in names for s in IMAGE_SUFFIXES):
        raise DataError(f"{path} holds splits ({_listing(path)}), not classes: pass split")
    return _select(labels, names, classes, limit, lambda i: _decode(files[i].read_bytes(), str(files[i])),
                   image_size, path)


def _is_cifar_batches(path: Path) -> bool:
    from .data_cache import is_cache_file

    if path.is_file():
        return is_cache_file(path)
    return any((path / n).exists() for n in ("batches.meta", "data_batch_1", "test_batch", "cifar-10-batches-py"))


def _listing(folder: Path) -> str:
    return ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"


def _zip_members(zf: zipfile.ZipFile, path: Path, split: str | None) -> tuple[list[str], list[int], list[str]]:
    """Image members ``[<split>/]<class>/<file>``, their labels and the sorted class names."""
    members = sorted(m for m in zf.namelist() if m.lower().endswith(IMAGE_SUFFIXES) and m.count("/") >= 1)
    tops = sorted({m.split("/")[-3] for m in members if m.count("/") >= 2})
    if split is not None:
        members = [m for m in members if m.count("/") >= 2 and m.split("/")[-3] == split]
        if not members:
            raise DataError(f"{path} has no {split!r} folder of class folders (first levels: {', '.join(tops) or 'none'})")
    elif len(tops) > 1:
        raise DataError(f"{path} holds several first-level folders ({', '.join(tops[:8])}): pass split")
    names = sorted({m.split("/")[-2] for m in members})
    index = {n: i for i, n in enumerate(names)}
    return members, [index[m.split("/")[-2]] for m in members], names


def _select(labels: list[int], names: list[str], classes, limit: int | None, decode, image_size: int,
            where: Path) -> ImageSet:
    """Keep ``classes`` (relabelled in their order) and ``limit`` images, decode and fit them."""
    if not labels:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folders under {where}")
    if classes is not None:
        unknown = [c for c in classes if c not in names]
        if unknown or not classes:
            raise DataError(f"classes {unknown or list(classes)} not in {where} (its classes: {', '.join(names)})")
        relabel = {names.index(c): k for k, c in enumerate(classes)}
        kept = [i for i, label in enumerate(labels) if label in relabel]
        labels, names = [relabel[labels[i]] for i in kept], list(classes)
    else:
        kept = list(range(len(labels)))
    order = _interleave_order(torch.tensor(labels, dtype=torch.int64), len(names))[:limit].tolist()
    images = [fit(decode(kept[i]), image_size) for i in order]
    stacked = (torch.from_numpy(np.stack(images)) if images
               else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8))
    return ImageSet(stacked, torch.tensor([labels[i] for i in order], dtype=torch.int64), tuple(names))


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [3, H, W] -> [3, size, size]: shorter side resized to ``size`` (bilinear,
    antialiased when shrinking), then the centre square cropped."""
    _, h, w = image.shape
    if (h, w) != (size, size):
        scale = size / min(h, w)
        rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
        pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        if (rh, rw) != (h, w):
            pil = pil.resize((rw, rh), Image.BILINEAR)
        top, left = (rh - size) // 2, (rw - size) // 2
        image = np.asarray(pil.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
    return np.ascontiguousarray(image)
