"""Finds the compiled extension and decides, per call, whether a fused kernel serves it.

The library chooses the path, never the caller: a fused kernel when ``pyengine._C`` is
built for the tensor's device, else the pure-PyTorch reference, with one warning. The
warning says why: not built, or built but failing to import, with the import error and the
torch the build was compiled against (``pyengine/_build_info.py``, written by setup.py)
beside the running one, so an ABI mismatch does not read as "not built".
"""
from __future__ import annotations

import importlib
import warnings

import torch

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or `bash scripts/setup.sh`)"


def build_torch_version() -> str | None:
    """The torch version ``pyengine._C`` was compiled against, or None when no build recorded one."""
    try:
        return importlib.import_module("pyengine._build_info").TORCH_VERSION
    except (ImportError, AttributeError):
        return None


def _describe(err: ImportError) -> str:
    """Why ``import pyengine._C`` failed, in words: not built, or built and failing to load."""
    if isinstance(err, ModuleNotFoundError) and err.name == "pyengine._C":
        return f"pyengine._C is not built; {BUILD_HINT}"
    built = build_torch_version()
    if built is None:
        against = "built against an unrecorded torch version"
    elif built != torch.__version__:
        against = f"built against torch {built}, running torch {torch.__version__}: rebuild it"
    else:
        against = f"built against this torch ({built})"
    return f"pyengine._C failed to import ({type(err).__name__}: {err}); {against}; {BUILD_HINT}"


def _load():
    # Importing it registers the pyengine:: kernels. import_module, not `from .. import`, so a
    # missing build reads "No module named 'pyengine._C'" rather than a circular-import error.
    try:
        return importlib.import_module("pyengine._C"), None
    except ImportError as err:  # the references serve every call
        return None, _describe(err)


_C, _LOAD_ERROR = _load()
_warned = False


def extension_loaded() -> bool:
    return _C is not None


def extension_error() -> str | None:
    """Why ``pyengine._C`` did not load (not built, or the import error and the torch it was
    built against), or None when it loaded."""
    return _LOAD_ERROR


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
