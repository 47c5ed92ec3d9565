"""CIFAR-10 loaders on small synthetic sources in each layout, plus one read of the real zip."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyengine.data import CIFAR10_CLASSES, DataError, ImageSet, load_cifar10



def _image(seed: int) -> np.ndarray:
    """A distinct, smooth uint8 image [32, 32, 3] (smooth so JPEG keeps it close)."""
    yy, xx = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 4, size=3)
    img = np.stack([(xx * (a + 1) + seed * 7) % 256, (yy * (b + 1) + seed * 13) % 256,
                    (xx + yy) * (c + 1) % 256], axis=-1)
    return img.astype(np.uint8)


def _interleave_reference(labels: list[int]) -> list[int]:
    """Indices in the order load_cifar10 promises: k-th of every class, then (k+1)-th, ..."""
    per_class = {c: [i for i, l in enumerate(labels) if l == c] for c in range(len(CIFAR10_CLASSES))}
    order, k = [], 0
    while len(order) < len(labels):
        order += [per_class[c][k] for c in sorted(per_class) if k < len(per_class[c])]
        k += 1
    return order


# --- cifar-10-batches-py ----------------------------------------------------------------------

def _batch_labels(name: str) -> list[int]:
    if name == "test_batch":  # classes in reverse order, twice, with class 3 once more
        return list(range(9, -1, -1)) * 2 + [3]
    i = int(name[-1])
    return [(i + 3 * j) % 10 for j in range(4)]


def _write_batches(folder: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict[str, tuple[np.ndarray, list]]:
    """A fake cifar-10-batches-py; returns {file: (images uint8 [n, 3, 32, 32], labels)}."""
    folder.mkdir(parents=True)
    written, seed = {}, 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = _batch_labels(name)
        images = np.stack([_image(seed + j).transpose(2, 0, 1) for j in range(len(labels))])
        seed += len(labels)
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": images.reshape(len(labels), 3072), b"filenames": [b"x.png"] * len(labels)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (images, labels)
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_test_split(tmp_path, protocol):
    written = _write_batches(tmp_path / "cifar-10-batches-py", protocol)
    images, labels = written["test_batch"]
    order = _interleave_reference(labels)
    for source in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = load_cifar10(source, "test")
        assert data.images.shape == (21, 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.dtype == torch.int64
        assert data.labels.tolist() == [labels[i] for i in order]
        assert data.labels.tolist()[:20] == list(range(10)) * 2
        assert torch.equal(data.images, torch.from_numpy(images[order]))


def test_batches_train_split_concatenates_five_files(tmp_path):
    written = _write_batches(tmp_path / "cifar-10-batches-py")
    images = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    order = _interleave_reference(labels)
    data = load_cifar10(tmp_path, "train")
    assert len(data) == 20
    assert data.labels.tolist() == [labels[i] for i in order]
    assert torch.equal(data.images, torch.from_numpy(images[order]))


def test_limit_is_a_class_balanced_prefix(tmp_path):
    _write_batches(tmp_path / "cifar-10-batches-py")
    full = load_cifar10(tmp_path, "test")
    part = load_cifar10(tmp_path, "test", limit=12)
    assert part.labels.tolist() == list(range(10)) + [0, 1]
    assert torch.equal(part.images, full.images[:12])
    assert len(load_cifar10(tmp_path, "test", limit=0)) == 0
    assert len(load_cifar10(tmp_path, "test", limit=1000)) == 21
    with pytest.raises(ValueError, match="limit must be"):
        load_cifar10(tmp_path, "test", limit=-1)
    with pytest.raises(ValueError, match="split must be"):
        load_cifar10(tmp_path, "val")


def test_batches_iterates_floats_in_unit_range(tmp_path):
    _write_batches(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path, "test")
    xs, ys = zip(*data.batches(8))
    assert [len(y) for y in ys] == [8, 8, 5]
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and x.shape == (21, 3, 32, 32)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert torch.equal(x, data.images.float() / 255)
    assert torch.equal(torch.cat(ys), data.labels)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.cat([y for _, y in data.batches(5, shuffle=True, generator=g)])
    assert sorted(shuffled.tolist()) == sorted(data.labels.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(0))


def test_missing_batch_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*test_batch"):
        load_cifar10(folder, "test")


@pytest.mark.parametrize("damage", ["random", "truncated", "not_a_dict", "bad_labels"])
def test_corrupt_batch_file(tmp_path, damage):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    file = folder / "test_batch"
    raw = file.read_bytes()
    if damage == "random":
        file.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "truncated":
        file.write_bytes(raw[: len(raw) // 2])
    elif damage == "not_a_dict":
        file.write_bytes(pickle.dumps([1, 2, 3]))
    else:
        file.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}))
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch file .*test_batch"):
        load_cifar10(folder, "test")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_foreign_global_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Exploit(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(evil))
    with pytest.raises(DataError, match="refusing to unpickle .*system"):
        load_cifar10(folder, "test")
    assert not marker.exists()


# --- image folder and zip ---------------------------------------------------------------------

def _write_folder(root: Path, split: str, per_class: int = 2, suffix: str = ".png",
                  seed: int = 0) -> dict[tuple[int, int], np.ndarray]:
    """root/<split>/<class>/<k><suffix>; returns {(label, k): image [3, 32, 32]}."""
    written = {}
    for label, name in enumerate(CIFAR10_CLASSES):
        (root / split / name).mkdir(parents=True)
        for k in range(per_class):
            img = _image(seed + 100 * label + k)
            Image.fromarray(img).save(root / split / name / f"{k:04d}{suffix}")
            written[label, k] = img.transpose(2, 0, 1)
    return written


def _expected(written, per_class: int) -> tuple[torch.Tensor, list[int]]:
    keys = [(label, k) for k in range(per_class) for label in range(10)]
    return torch.from_numpy(np.stack([written[key] for key in keys])), [label for label, _ in keys]


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, prefix + file.relative_to(folder).as_posix())
    return archive


def test_image_folder_png_exact(tmp_path):
    written = _write_folder(tmp_path, "test")
    _write_folder(tmp_path, "train", per_class=1, seed=5000)
    images, labels = _expected(written, 2)
    for source in (tmp_path, tmp_path / "test"):
        data = load_cifar10(source, "test")
        assert data.images.dtype == torch.uint8 and data.images.shape == (20, 3, 32, 32)
        assert data.labels.tolist() == labels
        assert torch.equal(data.images, images)
    assert len(load_cifar10(tmp_path, "train")) == 10


def test_image_folder_jpg(tmp_path):
    written = _write_folder(tmp_path, "test", suffix=".jpg")
    images, labels = _expected(written, 2)
    data = load_cifar10(tmp_path, "test", limit=15)
    assert data.labels.tolist() == labels[:15]
    assert data.images.shape == (15, 3, 32, 32)
    err = (data.images.float() - images[:15].float()).abs().mean()
    assert err < 8, f"JPEG round trip too far from the source: mean abs error {err}"


def test_image_folder_errors(tmp_path):
    _write_folder(tmp_path, "test", per_class=1)
    (tmp_path / "test" / "horses").mkdir()
    with pytest.raises(DataError, match="unknown class folder 'horses'"):
        load_cifar10(tmp_path, "test")
    (tmp_path / "test" / "horses").rmdir()
    (tmp_path / "test" / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="corrupt image file .*broken.png"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(DataError, match="no 'train' split"):
        load_cifar10(tmp_path, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_cifar10(tmp_path / "empty", "test")


def test_missing_path_and_non_zip_file(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        load_cifar10(tmp_path / "nowhere")
    notzip = tmp_path / "test.zip"
    notzip.write_text("hello")
    with pytest.raises(DataError, match="not a zip archive"):
        load_cifar10(notzip)


def test_zip_with_split_folders(tmp_path):
    written = _write_folder(tmp_path / "src", "test")
    _write_folder(tmp_path / "src", "train", per_class=1, seed=5000)
    archive = _zip_folder(tmp_path / "src", tmp_path / "cifar.zip")
    images, labels = _expected(written, 2)
    data = load_cifar10(archive, "test")
    assert data.labels.tolist() == labels
    assert torch.equal(data.images, images)
    assert torch.equal(load_cifar10(tmp_path / "src", "test").images, data.images)
    assert len(load_cifar10(archive, "train")) == 10
    # a folder holding <split>.zip, as ../shared/data/cifar10 does
    (tmp_path / "dl").mkdir()
    _zip_folder(tmp_path / "src", tmp_path / "dl" / "test.zip")
    assert torch.equal(load_cifar10(tmp_path / "dl", "test", limit=7).images, images[:7])


def test_zip_of_one_split(tmp_path):
    written = _write_folder(tmp_path / "src", "test")
    archive = _zip_folder(tmp_path / "src" / "test", tmp_path / "test.zip")
    images, labels = _expected(written, 2)
    data = load_cifar10(archive, "test")
    assert data.labels.tolist() == labels and torch.equal(data.images, images)


def test_zip_errors(tmp_path):
    _write_folder(tmp_path / "src", "test", per_class=2)
    (tmp_path / "src" / "test" / "dog" / "0001.png").write_bytes(b"\x89PNG garbage")
    archive = _zip_folder(tmp_path / "src", tmp_path / "a.zip")
    with pytest.raises(DataError, match=r"corrupt image file .*a\.zip:test/dog/0001\.png"):
        load_cifar10(archive, "test")
    # limit decodes only the images it keeps: the broken second dog is not among the first 10
    assert load_cifar10(archive, "test", limit=10).labels.tolist() == list(range(10))
    (tmp_path / "src" / "test" / "dog" / "0001.png").unlink()
    (tmp_path / "src" / "test" / "zebra").mkdir()
    Image.fromarray(_image(1)).save(tmp_path / "src" / "test" / "zebra" / "z.png")
    archive = _zip_folder(tmp_path / "src", tmp_path / "b.zip")
    with pytest.raises(DataError, match=r"unknown class folder 'zebra' at .*b\.zip:test/zebra/z\.png"):
        load_cifar10(archive, "test")
    truncated = tmp_path / "c.zip"
    truncated.write_bytes(archive.read_bytes()[:-30])
    with pytest.raises(DataError):
        load_cifar10(truncated, "test")


def test_imageset_subset():
    data = ImageSet(torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2), torch.arange(5))
    assert data.subset(2, offset=1).labels.tolist() == [1, 2]
    assert data.subset(offset=3).labels.tolist() == [3, 4]
    assert len(data.subset(10)) == 5


def test_real_test_zip(cifar10):
    data = load_cifar10(cifar10 / "test.zip", "test", limit=20)
    assert data.images.shape == (20, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == list(range(10)) * 2
    x = data.float_images()
    assert 0.2 < x.mean() < 0.8 and x.std() > 0.1  # real photographs, not blank
    assert torch.equal(load_cifar10(cifar10, "test", limit=20).images, data.images)
