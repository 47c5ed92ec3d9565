"""load_images: ImageFolder layout in folders and zips, any classes, resized and centre-cropped."""
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyengine import data as data_module
from pyengine.data import CIFAR10_CLASSES, DataError
from pyengine.image_folders import fit, load_images

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def stripes(h: int, w: int) -> np.ndarray:
    """[H, W, 3]: red left third, green middle, blue right third (a centre crop keeps green)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3, 0] = 255
    a[:, w // 3: w - w // 3, 1] = 255
    a[:, w - w // 3:, 2] = 255
    return a


def write_tree(root: Path, classes=("zebra", "ant", "moth"), per_class=3):
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(stripes(30 + 7 * i, 90)).save(root / name / f"{i}.png")
    return sorted(classes)


def test_folder_classes_sizes_and_centre_crop(tmp_path):
    names = write_tree(tmp_path / "imgs")
    data = load_images(tmp_path / "imgs", 24)
    assert data.class_names == tuple(names) == ("ant", "moth", "zebra")
    assert data.images.shape == (9, 3, 24, 24) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 1, 2] * 3  # interleaved class order
    centre = data.images[:, :, :, 4:20].float()
    assert centre[:, 1].mean() > 250 and centre[:, 0].mean() < 5 and centre[:, 2].mean() < 5  # green only
    x, y = next(data.batches(4))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.tolist() == [0, 1, 2, 0]


def test_special_images_decode_as_the_project_decodes_them(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "a" / "wide.png")  # 16-bit grey: white
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent: white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a" / "clear.png")
    data = load_images(tmp_path, 8)
    assert (data.images == 255).all()


def test_zip_splits_classes_and_limit(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "val"):
            for name in ("b", "a"):
                for i in range(2):
                    image = Image.fromarray(stripes(16, 16))
                    path = tmp_path / f"{split}{name}{i}.png"
                    image.save(path)
                    zf.write(path, f"{split}/{name}/{i}.png")
    with pytest.raises(DataError, match="several first-level folders.*pass split"):
        load_images(archive, 16)
    with pytest.raises(DataError, match="no 'test' folder"):
        load_images(archive, 16, "test")
    val = load_images(archive, 16, "val")
    assert val.class_names == ("a", "b") and len(val) == 4
    only_b = load_images(archive, 16, "train", classes=["b"], limit=1)
    assert only_b.class_names == ("b",) and only_b.labels.tolist() == [0] and len(only_b) == 1
    with pytest.raises(DataError, match=r"classes \['c'\] not in .*its classes: a, b"):
        load_images(archive, 16, "train", classes=["c"])


def test_zip_member_cap_applies(tmp_path, monkeypatch):
    archive = tmp_path / "one.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        Image.fromarray(stripes(16, 16)).save(tmp_path / "x.png")
        zf.write(tmp_path / "x.png", "cls/x.png")
    monkeypatch.setattr(data_module, "MAX_MEMBER_BYTES", 10)
    with pytest.raises(DataError, match="larger than the 10 bytes"):
        load_images(archive, 16)


def test_folder_of_splits_needs_split_and_bad_arguments(tmp_path):
    write_tree(tmp_path / "train")
    with pytest.raises(DataError, match="holds splits .*pass split"):
        load_images(tmp_path, 16)
    assert len(load_images(tmp_path, 16, "train")) == 9
    with pytest.raises(ValueError, match="image_size must be an integer in"):
        load_images(tmp_path, 4)
    with pytest.raises(DataError, match="not found"):
        load_images(tmp_path / "absent", 16)


def test_fit_resizes_the_shorter_side():
    image = np.zeros((3, 20, 40), np.uint8)
    image[:, :, 10:30] = 200
    out = fit(image, 10)
    assert out.shape == (3, 10, 10) and (out[:, :, 1:-1] == 200).all()  # the centre 20 columns, halved
    assert (out[:, :, [0, -1]] < 200).all()  # antialiased: the edge columns blend in the dark ones


@pytest.mark.skipif(not (CIFAR / "test.zip").is_file(), reason="no CIFAR-10 copy")
def test_cifar10_zip_is_one_source_among_them():
    data = load_images(CIFAR / "test.zip", 64, limit=20)
    assert data.class_names == CIFAR10_CLASSES and data.images.shape == (20, 3, 64, 64)
    assert data.labels.tolist() == list(range(10)) * 2
    small = data_module.load_cifar10(CIFAR / "test.zip", limit=20)
    assert torch.equal(small.labels, data.labels)
    same = load_images(CIFAR / "test.zip", 32, limit=20)
    assert torch.equal(same.images, small.images)  # at 32 px nothing is resampled
