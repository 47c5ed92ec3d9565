"""One error policy: user errors the command line reports in one line, and non-finite checks.

A *user error* is something the person running a command can fix: a bad flag value, a
missing or corrupt file, a run folder holding another configuration, a checkpoint that
does not fit the command, weights or a loss that turned NaN. Every command reports one
as ``pyengine <command>: error: <message>`` on stderr and exits with status 2, no
traceback (:func:`report`). The library raises them as ``ValueError`` (its subclasses
``DataError``, ``CheckpointError``, ``RunFolderError``, :class:`UsageError`,
:class:`NonFiniteError`) or ``OSError`` (a file system that refuses). Everything else,
``TypeError`` above all, is a bug and keeps its traceback.
"""
from __future__ import annotations

import math
import sys

# What a command reports as a user error (see the module doc); never TypeError, which hides bugs.
USER_ERRORS = (ValueError, OSError)
USER_ERROR_EXIT = 2


class UsageError(ValueError):
    """A command-line setting that cannot work here (e.g. ``--device cuda`` without CUDA)."""


class NonFiniteError(ValueError):
    """NaN or inf where a number must be finite: work stops where it first appears."""


def report(command: str, err: BaseException) -> int:
    """Print ``err`` as one line for ``pyengine <command>`` on stderr; -> the exit status, 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in message:
        message = f"{message}: {err.filename}"
    print(f"pyengine {command}: error: {message}", file=sys.stderr)
    return USER_ERROR_EXIT


def check_finite(value, where: str) -> None:
    """Raise NonFiniteError naming ``where`` unless ``value`` (a number or a Tensor) is all finite.

    A Tensor check synchronises with its device: call it where the value is read anyway.
    """
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise NonFiniteError(f"{where} is {value}")
        return
    import torch

    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        first = f" (first at index {tuple(bad)})" if bad else ""
        raise NonFiniteError(f"{where} is not finite: {int((~finite).sum())} NaN/inf value(s){first}")
