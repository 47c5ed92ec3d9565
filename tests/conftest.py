"""Shared test configuration: markers that skip what this machine cannot run, the CIFAR-10
fixture, and a one-thread fixture for modules of many tiny ops on shared CPUs.

Markers (skipped automatically, with the reason, where the need is not met):
- ``cuda``: needs a GPU;
- ``cuda_kernels``: needs a GPU and ``pyengine._C`` built with CUDA kernels;
- ``cifar10``: needs the CIFAR-10 JPEG copy (``test.zip``) from ``$PYENGINE_DATA`` or
  ``../shared/data/cifar10`` beside this checkout; the ``cifar10`` fixture gives its folder.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pyengine.data import DataError
from pyengine.ops import cuda_kernels_built
from pyengine.resources import cifar10_path


def _cifar10() -> Path | None:
    try:
        path = cifar10_path(start=Path(__file__).parent)
    except DataError:
        return None
    return path if (path / "test.zip").is_file() else None


CIFAR10 = _cifar10()
_NEEDS = {
    "cuda": (torch.cuda.is_available(), "needs CUDA"),
    "cuda_kernels": (torch.cuda.is_available() and cuda_kernels_built(),
                     "needs a GPU and pyengine._C built with CUDA kernels"),
    "cifar10": (CIFAR10 is not None, "needs the CIFAR-10 JPEG copy (test.zip) in $PYENGINE_DATA or "
                                     "../shared/data/cifar10 beside the checkout"),
}


def pytest_configure(config):
    for name, (_, reason) in _NEEDS.items():
        config.addinivalue_line("markers", f"{name}: {reason} (skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name, (met, reason) in _NEEDS.items():
            if not met and item.get_closest_marker(name) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cifar10() -> Path:
    """The folder of the CIFAR-10 JPEG copy (``test.zip``, ``train.zip``); skips without it."""
    if CIFAR10 is None:
        pytest.skip(_NEEDS["cifar10"][1])
    return CIFAR10


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module: on shared CPUs, much faster for tiny ops than
    oversubscribed threads. Modules use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
