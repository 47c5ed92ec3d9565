"""CIFAR-10 loading from the three layouts users hold it in.

Sources (detected from the path):
- the standard ``cifar-10-batches-py`` folder (pickled numpy batches, read with an
  unpickler that only admits numpy arrays, so a tampered file cannot run code);
- an image folder ``<root>/<split>/<class>/*.jpg|png`` (or ``<root>/<class>/...``);
- a zip of such a folder, e.g. ``../shared/data/cifar10/test.zip``.
- a cache file ``cifar10-<digest>.pt`` of both splits, decoded once (:mod:`pyengine.data_cache`).

Every loader returns :class:`ImageSet`: ``images`` uint8 [N, 3, 32, 32] and ``labels``
int64 [N] in CIFAR-10 class order; :meth:`ImageSet.batches` yields float tensors in [0, 1].

Image files decode to 8-bit RGB (:func:`to_rgb`, also used by ``pyengine purify``): 16-bit
grayscale is scaled to 8 bits, transparent pixels are composited over white. A zip member
larger than ``MAX_MEMBER_BYTES`` uncompressed is refused before it is read.
"""
from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_BATCH_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


class DataError(ValueError):
    """A data source is missing, corrupt or laid out in a way we cannot read."""


@dataclass
class ImageSet:
    """Images as uint8 [N, 3, H, W] with int64 labels [N] (``class_names[label]``, where known)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.labels.numel()

    def subset(self, n: int | None = None, *, offset: int = 0) -> "ImageSet":
        end = len(self) if n is None else min(len(self), offset + n)
        return ImageSet(self.images[offset:end], self.labels[offset:end], self.class_names)

    def float_images(self) -> torch.Tensor:
        """All images as float32 in [0, 1]."""
        return self.images.float().div_(255)

    def to(self, device: str | torch.device) -> "ImageSet":
        """The same set on ``device``: batches are then gathered, converted and augmented
        there (CIFAR-10's 150 MB of uint8 fit any GPU), with no host-to-device copy per batch."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.class_names)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` with x float32 [B, 3, H, W] in [0, 1]."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx].float().div_(255), self.labels[idx]


def check_limit(limit) -> None:
    """``limit=`` of the image loaders: None (every image) or an int >= 0."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")


def load_cifar10(path: str | Path, split: str = "test", *, limit: int | None = None) -> ImageSet:
    """Load CIFAR-10 ``split`` ("train" or "test") from a batches folder, image folder or zip.

    Images come in interleaved class order (the k-th image of every class, then the
    (k+1)-th, ...), so ``limit=n`` and :meth:`ImageSet.subset` give class-balanced subsets
    whatever order the source stores them in. With ``limit``, image files and zips decode
    only the images kept.
    """
    if split not in _BATCH_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    check_limit(limit)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"CIFAR-10 source not found: {path}")
    if path.is_file():
        from .data_cache import is_cache_file, load_cache

        if is_cache_file(path):  # decoded once by pyengine.data_cache.build_cache
            return load_cache(path, split).subset(limit)
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is a file but not a zip archive")
        return _load_zip(path, split, limit)
    batch_names = ("batches.meta", *_BATCH_FILES["train"], *_BATCH_FILES["test"])
    if any((path / name).exists() for name in batch_names):
        return _interleave_classes(_load_batches(path, split)).subset(limit)
    if (path / "cifar-10-batches-py").is_dir():
        return _interleave_classes(_load_batches(path / "cifar-10-batches-py", split)).subset(limit)
    if (path / f"{split}.zip").is_file():
        return _load_zip(path / f"{split}.zip", split, limit)
    if (path / split).is_dir():
        return _load_folder(path / split, limit)
    other = next(s for s in _BATCH_FILES if s != split)
    if (path / other).is_dir():
        raise DataError(f"{path} holds a {other!r} split but no {split!r} split")
    return _load_folder(path, limit)


def _interleave_order(labels: torch.Tensor, num_classes: int = len(CIFAR10_CLASSES)) -> torch.Tensor:
    """Indices putting ``labels`` in interleaved class order (stable within each class)."""
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[by_class] = torch.arange(len(labels)) - starts[labels[by_class]]
    return torch.argsort(rank * num_classes + labels)


def _interleave_classes(data: ImageSet) -> ImageSet:
    order = _interleave_order(data.labels)
    return ImageSet(data.images[order], data.labels[order])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the few globals a CIFAR batch needs; anything else is refused."""

    # _codecs.encode carries bytes in protocol <= 2 pickles written by Python 3;
    # _frombuffer carries arrays in protocol 5 pickles.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _load_batches(folder: Path, split: str) -> ImageSet:
    images, labels = [], []
    for name in _BATCH_FILES[split]:
        file = folder / name
        if not file.is_file():
            raise DataError(f"missing CIFAR-10 batch file: {file}")
        try:
            with open(file, "rb") as f:
                batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            label = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, IndexError, AttributeError, ValueError,
                TypeError, OverflowError, MemoryError) as err:
            raise DataError(f"corrupt CIFAR-10 batch file {file}: {type(err).__name__}: {err}") from err
        if label.ndim != 1 or len(label) != len(data):
            raise DataError(f"corrupt CIFAR-10 batch file {file}: {len(data)} images, {label.shape} labels")
        if label.size and not (0 <= label.min() and label.max() < len(CIFAR10_CLASSES)):
            raise DataError(f"corrupt CIFAR-10 batch file {file}: labels outside 0..{len(CIFAR10_CLASSES) - 1}")
        images.append(data)
        labels.append(label)
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _class_index(class_name: str, where: str) -> int:
    try:
        return CIFAR10_CLASSES.index(class_name)
    except ValueError:
        raise DataError(
            f"unknown class folder {class_name!r} at {where}; expected one of {', '.join(CIFAR10_CLASSES)}"
        ) from None


# Pillow's modes for 16-bit grayscale PNGs (older Pillow opens them as 32-bit "I").
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# A zip member larger than this is refused before it is read: images are kilobytes to a few
# megabytes, and a crafted member can inflate a tiny zip to gigabytes.
MAX_MEMBER_BYTES = 64 << 20


def read_member(zf: zipfile.ZipFile, name: str, where: str) -> bytes:
    """The bytes of zip member ``name``, at most MAX_MEMBER_BYTES (the declared size is checked
    first and the read is bounded, so a member that lies about its size is refused too)."""
    size = zf.getinfo(name).file_size
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"{where} is {size} bytes uncompressed, larger than the {MAX_MEMBER_BYTES} bytes "
                        "allowed for one image; refusing to read it")
    with zf.open(name) as member:
        raw = member.read(MAX_MEMBER_BYTES + 1)
    if len(raw) > MAX_MEMBER_BYTES:
        raise DataError(f"{where} inflates beyond the {MAX_MEMBER_BYTES} bytes allowed for one image")
    return raw


def to_rgb(im: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] of a decoded image.

    16-bit grayscale is scaled to 8 bits (v * 255 / 65535, rounded) instead of Pillow's
    clipping, which turns it white. Transparency (an alpha channel, or a palette or
    grayscale ``tRNS`` entry) is composited over white, as image viewers show it, instead of
    being dropped, which shows whatever colour the transparent pixels happen to store.
    """
    if im.mode in _WIDE_GRAY:
        wide = np.asarray(im).astype(np.int64)
        gray = ((wide.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        transparent = im.info.get("transparency")
        if isinstance(transparent, int):
            gray[wide == transparent] = 255
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                          .convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _decode(raw: bytes, where: str) -> np.ndarray:
    """uint8 [3, H, W] of an encoded image (see :func:`to_rgb` for 16-bit and transparent ones)."""
    try:
        with Image.open(io.BytesIO(raw)) as im:
            arr = to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"corrupt image file {where}: {err}") from err
    return arr.transpose(2, 0, 1)


def _stack(decoded: list[np.ndarray], labels: list[int], where: Path, *, found: int) -> ImageSet:
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {where}")
    if not decoded:  # limit=0
        return ImageSet(torch.empty(0, 3, 32, 32, dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    shapes = {a.shape for a in decoded}
    if len(shapes) != 1:
        raise DataError(f"images under {where} have different sizes: {sorted(shapes)[:4]}")
    return ImageSet(torch.from_numpy(np.stack(decoded)), torch.tensor(labels, dtype=torch.int64))


def _take(labels: list[int], limit: int | None) -> list[int]:
    """Indices of the first ``limit`` entries in interleaved class order."""
    return _interleave_order(torch.tensor(labels, dtype=torch.int64))[:limit].tolist()


def _load_folder(folder: Path, limit: int | None) -> ImageSet:
    files, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = _class_index(class_dir.name, str(class_dir))
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    keep = _take(labels, limit)
    decoded = [_decode(files[i].read_bytes(), str(files[i])) for i in keep]
    return _stack(decoded, [labels[i] for i in keep], folder, found=len(files))


def _load_zip(archive: Path, split: str, limit: int | None) -> ImageSet:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = sorted(m for m in zf.namelist() if m.lower().endswith(IMAGE_SUFFIXES))
            parts = [m.split("/") for m in members]
            # Members are <split>/<class>/<file>, or <class>/<file> in a zip of one split.
            if parts and any(len(p) >= 3 for p in parts):
                members = [m for m, p in zip(members, parts) if len(p) >= 3 and p[-3] == split]
            labels = [_class_index(m.split("/")[-2] if "/" in m else "", f"{archive}:{m}") for m in members]
            keep = _take(labels, limit)
            decoded = [_decode(read_member(zf, members[i], f"{archive}:{members[i]}"), f"{archive}:{members[i]}")
                       for i in keep]
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"corrupt zip archive {archive}: {err}") from err
    return _stack(decoded, [labels[i] for i in keep], archive, found=len(members))
