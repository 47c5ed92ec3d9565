"""A registry of named architectures, in the spirit of timm.

Each architecture is a short function decorated with :func:`register_model`; its default
configuration (feature width, contrastive-head sizes, input normalisation) is data stored
beside it, so checkpoints and the CLI can build a model from its name alone.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint or the purifier needs to know about an architecture."""

    num_features: int
    head_hidden: int
    head_out: int
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    input_size: tuple[int, int, int] = (3, 32, 32)
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Training settings the architecture was made with (ClassifierTrainConfig fields); the
    # command line uses them where no flag is given.
    train_recipe: dict = field(default_factory=dict, compare=False)


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelConfig]] = {}


def register_model(config: ModelConfig) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = (fn, config)
        return fn
    return wrap


def list_models(pattern: str | None = None) -> list[str]:
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _lookup(name: str) -> tuple[Callable[..., nn.Module], ModelConfig]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(list_models())})")
    return _REGISTRY[name]


def model_config(name: str) -> ModelConfig:
    return _lookup(name)[1]


def create_model(name: str, *, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered classifier taking images in [0, 1] (normalisation is inside)."""
    fn, config = _lookup(name)
    kwargs.setdefault("mean", config.mean)
    kwargs.setdefault("std", config.std)
    model = fn(num_classes=num_classes, **kwargs)
    model.model_name = name
    return model
