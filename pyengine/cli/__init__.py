"""``pyengine`` command line: a thin layer over the public API.

One module per command group: :mod:`.train` (``train-classifier``, ``train-head``),
:mod:`.purify` (``demo``, ``eval``, ``purify``), :mod:`.export` (``export onnx|tensorrt|check``),
:mod:`.results` (``bench``, ``parity``, ``results``); :mod:`.flags` reads the values (one
number parser, :func:`~pyengine.cli.flags.parse_number`, for every number such as ``8/255``)
and :mod:`.common` holds the flags several groups share. Every purifier comes from
:func:`pyengine.load_purifier`.

Error policy (:mod:`pyengine.errors`): a user error, a bad flag value or a ``ValueError`` /
``OSError`` a command raises (``UsageError``, ``CheckpointError``, ``DataError``, ...), prints
``pyengine <command>: error: ...`` on one line of stderr and exits with status 2. Anything
else, ``TypeError`` above all, is a bug and keeps its traceback. A command returns its exit
status (None: 0), e.g. 1 for a failed check.
"""
from __future__ import annotations

import argparse
import sys

from ..provenance import record_command
from . import export, purify, results, train
from .common import DEFAULT_DATA, PURIFIER_PRECISIONS
from .train import train_config

__all__ = ["DEFAULT_DATA", "PURIFIER_PRECISIONS", "build_parser", "main", "train_config"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors follow the policy: one line (argparse's own would print
    its usage first), exit status 2."""

    def error(self, message: str):
        from ..errors import USER_ERROR_EXIT

        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pyengine", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, purify, results, export):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; -> its exit status: 0, 2 after a user error printed in one line, or
    the command's own (1: a check failed; 3: an optional dependency is missing)."""
    from ..errors import USER_ERRORS, report

    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "export_command", None))))
    try:
        with record_command(["pyengine", *(sys.argv[1:] if argv is None else argv)]):
            return args.func(args) or 0
    except USER_ERRORS as err:
        return report(command, err)


if __name__ == "__main__":
    sys.exit(main())
