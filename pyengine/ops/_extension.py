"""Finds the compiled extension and decides, per call, whether a fused kernel serves it.

The library chooses the path, never the caller: a fused kernel when ``pyengine._C`` is
built for the tensor's device, else the pure-PyTorch reference, with one warning.
"""
from __future__ import annotations

import importlib
import warnings

import torch

try:
    # Importing it registers the pyengine:: kernels. import_module, not `from .. import`, so a
    # missing build reads "No module named 'pyengine._C'" rather than a circular-import error.
    _C = importlib.import_module("pyengine._C")
    _LOAD_ERROR: str | None = None
except ImportError as err:  # not built: the references serve every call
    _C = None
    _LOAD_ERROR = f"{err}; build it with `pip install --no-build-isolation -e .`"

_warned = False


def extension_loaded() -> bool:
    return _C is not None


def cuda_kernels_built() -> bool:
    return _C is not None and bool(getattr(_C, "WITH_CUDA", False))


def use_fused(*tensors: torch.Tensor) -> bool:
    """True when every tensor lives on a device the built extension has kernels for."""
    global _warned
    device = tensors[0].device.type
    if device == "cpu" and extension_loaded() or device == "cuda" and cuda_kernels_built():
        return True
    if device in ("cpu", "cuda") and not _warned:
        _warned = True
        reason = _LOAD_ERROR or f"it was built without {device.upper()} kernels"
        warnings.warn(f"pyengine: fused kernels unavailable ({reason}); using the pure-PyTorch "
                      "reference ops", RuntimeWarning, stacklevel=3)
    return False
