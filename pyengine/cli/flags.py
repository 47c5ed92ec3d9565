"""Command-line values with bounds: argparse types that refuse what cannot work (the CLI's
error policy, :mod:`pyengine.errors`, asks for a bound on every number a user types), and the
check of an output file before the work that ends by writing it.

:func:`parse_number` is the one number parser: every flag that takes a real number (a
radius, a step size, a learning rate, a tolerance) reads it through :func:`number_in`, so
``8/255`` works wherever ``0.0314`` does."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def parse_number(text: str) -> float:
    """Accept ``8/255`` as well as ``0.0314``; finite numbers only."""
    try:
        numerator, slash, denominator = text.partition("/")
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.03 or 8/255, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_in(low: int, high: int | None = None):
    """argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {'...' if high is None else high}], "
                                             f"got {value}")
        return value
    return parse


def number_in(low: float, high: float, *, open_low: bool = False, open_high: bool = False):
    """argparse type: a finite number (``8/255`` accepted) in the interval from ``low`` to
    ``high``, each end excluded when ``open_low`` / ``open_high``."""
    def parse(text: str) -> float:
        value = parse_number(text)
        if value < low or value > high or (open_low and value == low) or (open_high and value == high):
            interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text}")
        return value
    return parse


SEED = int_in(0, 2**32 - 1)  # CounterRandom keys draws by the seed's low 32 bits
THREADS = int_in(1, 4096)
BATCH = int_in(1, 1 << 16)
COUNT = int_in(1)  # images; the data bound the rest
RADIUS = number_in(0, 1, open_low=True)  # eps and eps_v, in [0, 1] pixel units
# eps and eps_v in either norm (L2 up to 64, Mao et al.'s Table 5 is 256/255); the norm's own
# bound is checked where the norm is known (pyengine.purify.check_eps).
NORM_RADIUS = number_in(0, 64, open_low=True)
PURIFY_STEPS = int_in(0, 10_000)  # Purifier's own bounds


def check_output_file(path: Path) -> None:
    """UsageError unless ``path`` can be written as a file, checked before the work that ends
    by writing it (a training run must not fail at its last step on a folder or read-only disk)."""
    from ..errors import UsageError

    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.{os.getpid()}.probe", "wb"):
            pass
        (path.parent / f".{path.name}.{os.getpid()}.probe").unlink()
    except OSError as err:
        raise UsageError(f"--out {path}: cannot write in {path.parent}: {err.strerror or err}") from err
