"""Defend a user's own classifier: train G and the bank on it, frozen, from its images.

:func:`train_head_for_model` takes a model source (:mod:`pyengine.models.sources`: a
registry name, ``timm:NAME`` or ``torchvision:NAME`` with a weights file, a ``.pt2`` or
TorchScript file) and labelled images (:func:`pyengine.image_folders.load_images`), trains
the contrastive head with :func:`pyengine.train.train_head` and writes a defended
checkpoint that every command and :func:`pyengine.load_purifier` take. The checkpoint
records the source, the weights' sha256, normalisation, feature layer, image size and class
names; the classifier's weights stay in the user's file (a registry model is stored whole).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .data import ImageSet
from .models.head import ContrastiveHead
from .models.sources import load_model
from .train import HeadTrainConfig, train_head

# G's sizes, as the paper's code for PreAct-ResNet-18 (512 features -> 128 -> 8).
HEAD_HIDDEN, HEAD_OUT = 128, 8


def train_head_for_model(source: str, data: ImageSet, out: str | Path, *, weights: str | Path | None = None,
                         config: HeadTrainConfig | None = None, layer: str | None = None, mean=None, std=None,
                         hidden: int = HEAD_HIDDEN, dim: int = HEAD_OUT, class_names: list[str] | None = None,
                         device: str | torch.device = "cpu", dataset: str | None = None,
                         progress: bool = True) -> dict:
    """Train G and the bank for the frozen classifier of ``source`` on ``data``; write ``out``.

    Args:
        data: images uint8 [N, 3, S, S] (S is the image size the checkpoint then requires),
            with ``class_names`` unless ``class_names`` is given.
        weights, layer, mean, std: as :func:`pyengine.models.sources.load_model`.
        class_names: the classifier's class names (default: ``data.class_names``, whose number
            must then equal the classifier's number of classes).
        dataset: a note recorded in the manifest (e.g. where the images came from).

    Returns the training metrics (``bank_size``) with ``num_features`` and ``num_classes``.
    """
    if data.images.dim() != 4 or data.images.shape[-1] != data.images.shape[-2]:
        raise ValueError(f"data must hold square images [N, 3, S, S], got {list(data.images.shape)}")
    size = int(data.images.shape[-1])
    model = load_model(source, weights=weights, layer=layer, mean=mean, std=std, image_size=size)
    record = getattr(model, "record", None)
    num_classes = record["num_classes"] if record else model.fc.out_features
    num_features = record["num_features"] if record else model.num_features
    names = list(class_names) if class_names is not None else list(data.class_names or [])
    if len(names) != num_classes:
        raise ValueError(f"{source} gives {num_classes} classes but {'class_names' if class_names else 'the data'} "
                         f"names {len(names)} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); "
                         "pass class_names in the classifier's order")
    head = ContrastiveHead(num_features, hidden, dim)
    manifest = {"image_size": [size, size], "class_names": names}
    if dataset:
        manifest["dataset"] = dataset
    metrics = train_head(model.to(device), head.to(device), data.to(device), out, config or HeadTrainConfig(),
                         manifest=manifest, progress=progress)
    return {**metrics, "num_features": num_features, "num_classes": num_classes}
