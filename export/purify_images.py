"""Purify and classify images with an exported model, on a device without torch.

Needs numpy and onnxruntime (or, with ``--plan``, TensorRT and cuda-python), and Pillow for
image files. The randomness (random start, view parameters) is drawn on the host by
pyengine's runtime (``kit.load("runtime")``), seeded by ``--seed``.

    python3 purify_images.py model.onnx IMAGES [--plan model.plan] [--out predictions.csv]
        [--logits logits.npy] [--purified purified.npy] [--seed 0]

IMAGES: a folder of .png/.jpg/.jpeg files (sorted by name; every image must have the model's
size), or a .npy array: uint8 [N, H, W, 3] or float32 [N, 3, H, W] in [0, 1]. The model's
batch is fixed at export: the last batch is padded with copies of its last image, whose
results are dropped (with ``negatives="batch"`` exports, padding changes the batch-mates).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from kit import load

SUFFIXES = (".png", ".jpg", ".jpeg")


def read_images(source: Path, image_shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
    """-> (names, float32 [N, 3, H, W] in [0, 1]) from a folder of image files or a .npy array."""
    if source.suffix == ".npy":
        array = np.load(source)
        if array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3:
            array = array.transpose(0, 3, 1, 2).astype(np.float32) / 255
        if array.dtype != np.float32 or array.ndim != 4:
            raise SystemExit(f"{source}: expected uint8 [N, H, W, 3] or float32 [N, 3, H, W], got "
                             f"{array.dtype} {array.shape}")
        names = [f"{source.name}[{i}]" for i in range(len(array))]
    elif source.is_dir():
        try:
            from PIL import Image
        except ImportError:
            raise SystemExit("reading image files needs Pillow: pip install pillow (or pass a .npy array)") from None
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise SystemExit(f"no {', '.join(SUFFIXES)} files in {source}")
        decoded = []
        for path in files:
            with Image.open(path) as im:
                decoded.append(np.asarray(im.convert("RGB")))
        names = [p.name for p in files]
        sizes = {a.shape for a in decoded}
        if len(sizes) != 1:
            raise SystemExit(f"images in {source} have different sizes: {sorted(sizes)[:4]}")
        array = np.stack(decoded).transpose(0, 3, 1, 2).astype(np.float32) / 255
    else:
        raise SystemExit(f"{source} is neither a folder of images nor a .npy file")
    if not len(array):
        raise SystemExit(f"{source} holds no images")
    if array.shape[1:] != image_shape:
        raise SystemExit(f"the model takes images of shape {image_shape} (C, H, W), {source} holds {array.shape[1:]}")
    return names, np.ascontiguousarray(array)


def purify_all(purifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, C] and purified images [N, 3, H, W] of every image, a model batch at a time."""
    batch = purifier.batch
    logits, purified = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        kept = len(chunk)
        if kept < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - kept, axis=0)])
        result = purifier.purify(chunk)
        logits.append(result.logits[:kept])
        purified.append(result.images[:kept])
    return np.concatenate(logits), np.concatenate(purified)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the exported .onnx (its .json sidecar beside it)")
    parser.add_argument("images", type=Path, help="a folder of images or a .npy array")
    parser.add_argument("--plan", type=Path, default=None, help="run this TensorRT plan (built from the model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the host sampler (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="default: %(default)s")
    parser.add_argument("--logits", type=Path, default=None, help="also write the logits [N, C] as .npy")
    parser.add_argument("--purified", type=Path, default=None, help="also write the purified images as .npy")
    args = parser.parse_args(argv)

    runtime = load("runtime")
    session = None
    if args.plan is not None:
        tensorrt = load("tensorrt")
        try:
            session = tensorrt.TensorRTRunner(args.plan)
        except tensorrt.TensorRTUnavailable as err:
            print(f"purify_images: {err}", file=sys.stderr)
            return 3
    purifier = runtime.OnnxPurifier(args.model, seed=args.seed, session=session)
    names, images = read_images(args.images, tuple(purifier.meta["image_size"]))
    logits, purified = purify_all(purifier, images)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "prediction"])
        writer.writerows(zip(names, logits.argmax(1).tolist()))
    for path, array in ((args.logits, logits), (args.purified, purified)):
        if path is not None:
            np.save(path, array)
    print(f"purify_images: {len(names)} images through {args.plan or args.model} "
          f"({purifier.providers[0]}), predictions in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
