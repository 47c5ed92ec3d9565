"""Tiny CIFAR-10 JPEG zips in the shared copy's layout (``<split>/<class>/<NNNN>.jpg``)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pyengine.data import CIFAR10_CLASSES


def write_cifar_zips(folder: Path, *, train_per_class: int = 4, test_per_class: int = 3, seed: int = 0) -> Path:
    """``folder/train.zip`` and ``folder/test.zip`` of random 32x32 JPEGs; returns ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        with zipfile.ZipFile(folder / f"{split}.zip", "w", zipfile.ZIP_STORED) as zf:
            for label, name in enumerate(CIFAR10_CLASSES):
                for i in range(per_class):
                    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    pixels[..., label % 3] //= 2  # a little class signal
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
                    zf.writestr(f"{split}/{name}/{i:04d}.jpg", buffer.getvalue())
    return folder
