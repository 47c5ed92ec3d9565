"""Where pyengine finds its files: shipped package data and the CIFAR-10 data set.

Package data (the shipped checkpoints, TensorRT's operator tables) is located with
:mod:`importlib.resources`, so a wheel install finds it as an editable one does; nothing is
computed relative to the repository. CIFAR-10 is not shipped: :func:`cifar10_path` takes
it from ``--data``, else ``$PYENGINE_DATA``, else ``../shared/data/cifar10`` beside the
pyengine checkout the current directory lies in (the development layout), and otherwise
says how to get it.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DATA_ENV = "PYENGINE_DATA"
CHECKPOINT_SUFFIX = ".safetensors"
# Where the README's commands find CIFAR-10: relative to the root of a pyengine checkout.
CHECKOUT_DATA = Path("..", "shared", "data", "cifar10")
CIFAR10_HELP = ("get CIFAR-10 (e.g. https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked: its "
                "cifar-10-batches-py folder; an image folder <split>/<class>/*.png; or a folder holding "
                f"train.zip and test.zip) and pass --data PATH or set {DATA_ENV}=PATH")


def package_path(*parts: str) -> Path:
    """The file system path of ``pyengine/<parts...>`` in the installed package.

    The package holds a compiled extension, so it is always installed as files (never
    zipped) and its resources are real paths that safetensors and onnx can open."""
    return Path(str(resources.files("pyengine").joinpath(*parts)))


def checkpoints_dir() -> Path:
    """The folder of the shipped checkpoints (``pyengine/checkpoints``)."""
    return package_path("checkpoints")


def shipped_checkpoints() -> list[str]:
    """File names of the shipped checkpoints, sorted."""
    return sorted(p.name for p in checkpoints_dir().glob(f"*{CHECKPOINT_SUFFIX}"))


def trt_ops_dir() -> Path:
    """TensorRT's ONNX operator tables (``pyengine/deploy/trt_supported_ops/tensorrt-<version>.json``)."""
    return package_path("deploy", "trt_supported_ops")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint path as a user gives it -> the file to open.

    An existing file wins. Otherwise a shipped checkpoint is found by its file name, given
    bare (``cifar10_airbench94.safetensors``, the suffix may be left out) or as the
    repository path the docs use (``pyengine/checkpoints/<name>``), so those commands also
    work from any folder with a wheel install. Raises FileNotFoundError listing the shipped
    ones otherwise."""
    given = Path(path)
    if given.exists():
        return given
    bare = len(given.parts) == 1
    documented = not given.is_absolute() and given.parts[:-1] == ("pyengine", "checkpoints")
    if bare or documented:
        name = given.name if given.suffix == CHECKPOINT_SUFFIX else given.name + CHECKPOINT_SUFFIX
        shipped = checkpoints_dir() / name
        if shipped.is_file():
            return shipped
    raise FileNotFoundError(f"checkpoint not found: {path} (neither a file nor a shipped checkpoint; shipped: "
                            f"{', '.join(shipped_checkpoints()) or 'none'})")


def checkout_root(start: str | os.PathLike | None = None) -> Path | None:
    """The pyengine checkout holding ``start`` (default: the current directory): the nearest
    folder at or above it with a ``pyproject.toml`` and a ``pyengine`` package; else None."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "pyengine" / "__init__.py").is_file():
            return folder
    return None


def cifar10_path(path: str | os.PathLike | None = None, *, start: str | os.PathLike | None = None) -> Path:
    """The CIFAR-10 source to read: ``path`` (``--data``) if given, else ``$PYENGINE_DATA``,
    else ``../shared/data/cifar10`` beside the pyengine checkout holding ``start`` (default:
    the current directory) when it exists. Raises :class:`pyengine.data.DataError` (a ValueError) saying how to get the
    data set otherwise; whether the source is readable is :func:`pyengine.data.load_cifar10`'s
    check."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    root = checkout_root(start)
    if root is not None and (root / CHECKOUT_DATA).exists():
        # Relative to the current directory, as the README writes it, when that is the root.
        return CHECKOUT_DATA if root == Path.cwd().resolve() else (root / CHECKOUT_DATA).resolve()
    from .data import DataError  # torch-heavy: only on this error path

    where = f"; no {CHECKOUT_DATA.as_posix()} beside the checkout {root}" if root else ""
    raise DataError(f"no CIFAR-10 data set given{where}: {CIFAR10_HELP}")
