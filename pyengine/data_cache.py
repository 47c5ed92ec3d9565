"""CIFAR-10 decoded once: the JPEG zips' images as uint8 tensors in one file, keyed by the
zips' content.

Decoding the 60,000 JPEGs of ``train.zip`` and ``test.zip`` takes seconds to tens of
seconds; every training and evaluation command would pay it again. :func:`build_cache`
decodes both splits once (through :func:`pyengine.data.load_cifar10`, so the images, labels
and their interleaved class order are exactly the zips') and writes
``cifar10-<digest>.pt``, where the digest is the SHA-256 of the two zips' bytes. A cache
file of other zips has another name and is never read for these; one whose recorded digest
does not match its name (renamed, truncated, tampered) is rebuilt.

The file is an ordinary data source: ``load_cifar10("cifar10-<digest>.pt", "train")`` and
every command's ``--data`` read it (tensors only, ``weights_only=True``; memory-mapped, so
reading the 10,000 test images does not read the 50,000 training ones).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .data import CIFAR10_CLASSES, DataError, ImageSet, load_cifar10
from .resume import file_sha256, save_atomic

CACHE_PREFIX = "cifar10-"
CACHE_SUFFIX = ".pt"
CACHE_FORMAT = 1
SPLITS = ("train", "test")


def source_digest(source: str | Path) -> str:
    """SHA-256 (hex) of ``source/train.zip`` and ``source/test.zip``, each file's bytes
    hashed under its name, so swapping or changing either zip changes the digest."""
    source = Path(source).expanduser()
    total = hashlib.sha256()
    for split in SPLITS:
        path = source / f"{split}.zip"
        if not path.is_file():
            raise DataError(f"the CIFAR-10 cache is built from {source}/train.zip and test.zip (the JPEG copy); "
                            f"{path} is missing")
        total.update(f"{split}.zip:{file_sha256(path)}\n".encode())
    return total.hexdigest()


def cache_path(cache_dir: str | Path, digest: str) -> Path:
    return Path(cache_dir) / f"{CACHE_PREFIX}{digest[:16]}{CACHE_SUFFIX}"


def is_cache_file(path: Path) -> bool:
    """Whether ``path`` names a cache file (by its name; :func:`load_cache` checks the content)."""
    return path.name.startswith(CACHE_PREFIX) and path.suffix == CACHE_SUFFIX


def build_cache(source: str | Path, cache_dir: str | Path, *, log=print) -> Path:
    """The cache file of ``source``'s zips under ``cache_dir``: reused when it exists and
    records the zips' digest, else decoded and written (through a temporary file, so a
    killed run leaves no half-written cache)."""
    digest = source_digest(source)
    path = cache_path(cache_dir, digest)
    if path.is_file():
        try:
            _read(path, expected=digest)
            return path
        except DataError as err:
            log(f"rebuilding the CIFAR-10 cache: {err}")
    payload = {"format": CACHE_FORMAT, "digest": digest}
    for split in SPLITS:
        data = load_cifar10(Path(source).expanduser() / f"{split}.zip", split)
        payload[f"{split}_images"], payload[f"{split}_labels"] = data.images.contiguous(), data.labels.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(payload, path)
    return path


def load_cache(path: str | Path, split: str) -> ImageSet:
    """``split`` of a cache file: images uint8 [N, 3, 32, 32], labels int64 [N] in 0..9."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    payload = _read(Path(path))
    return ImageSet(payload[f"{split}_images"], payload[f"{split}_labels"])


def _read(path: Path, expected: str | None = None) -> dict:
    """The cache's tensors after checking its format, digest and shapes (DataError otherwise)."""
    try:
        payload = torch.load(path, weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise DataError(f"corrupt CIFAR-10 cache {path}: {err}; delete it and rerun the data stage") from err
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a CIFAR-10 cache of format {CACHE_FORMAT}")
    digest = payload.get("digest")
    if not isinstance(digest, str) or not path.name == cache_path(path.parent, digest).name:
        raise DataError(f"{path} records the digest {digest!r}, which its name does not carry")
    if expected is not None and digest != expected:
        raise DataError(f"{path} was built from other zips (digest {digest[:16]}..., expected {expected[:16]}...)")
    for split in SPLITS:
        images, labels = payload.get(f"{split}_images"), payload.get(f"{split}_labels")
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and images.shape[1] == 3 and isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
                and labels.shape == images.shape[:1]):
            raise DataError(f"corrupt CIFAR-10 cache {path}: {split} images must be uint8 [N, 3, H, W] with "
                            "int64 labels [N]")
        if labels.numel() and not (0 <= labels.min() and labels.max() < len(CIFAR10_CLASSES)):
            raise DataError(f"corrupt CIFAR-10 cache {path}: {split} labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    return payload
