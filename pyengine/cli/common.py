"""What several command groups share: the data, checkpoint, purifier and device flags, and
reading the device and thread flags."""
from __future__ import annotations

import argparse
from pathlib import Path

from .flags import NORM_RADIUS, PURIFY_STEPS

# The Purifier's precisions (pyengine.purify.purifier.PRECISIONS and "auto"), spelled out so
# that parsing the command line does not import torch.
PURIFIER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 source: cifar-10-batches-py folder, image folder or zip folder (default: "
                        "$PYENGINE_DATA, else ../shared/data/cifar10 beside the pyengine checkout you are in); for a "
                        "user's model (train-head --model), a folder or zip of <class>/<image>")


def resolve_locations(args) -> None:
    """``--checkpoint`` as typed -> what to read: a checkpoint path, or a shipped one by its
    name (:func:`pyengine.resources.resolve_checkpoint`)."""
    from ..resources import resolve_checkpoint

    if getattr(args, "checkpoint", None) is not None:
        args.checkpoint = resolve_checkpoint(args.checkpoint)


def cifar10_data(args) -> Path:
    """The CIFAR-10 source a command reads (also left in ``args.data`` for its messages):
    ``--data``, ``$PYENGINE_DATA`` or the checkout's ``../shared/data/cifar10``, else a
    DataError saying how to get CIFAR-10. Resolved only by commands that read CIFAR-10, so
    one given a user's images never falls back to it."""
    from ..resources import cifar10_path

    args.data = cifar10_path(args.data)
    return args.data


def add_purifier_args(p: argparse.ArgumentParser) -> None:
    """--eps-v, --steps, --precision: :func:`pyengine.load_purifier`'s keywords, its defaults."""
    p.add_argument("--eps-v", type=NORM_RADIUS, default=None,
                   help="contrastive purification radius, in the attack's norm; its step follows (eps_v / 8 "
                        "L-inf, eps_v / 256 L2) (default: 2 x --eps where there is one, else 16/255; refused for "
                        "SOAP checkpoints, whose min-aux picks its own)")
    p.add_argument("--steps", type=PURIFY_STEPS, default=None,
                   help="purification steps (default: K=40 contrastive, T=5 SOAP)")
    p.add_argument("--precision", choices=PURIFIER_PRECISIONS, default=None,
                   help="the contrastive purifier's backbone precision (default: auto, bf16 on CUDA and on CPUs "
                        "with native bf16 (AVX512-BF16, AMX), fp32 elsewhere; SOAP runs in fp32)")


def add_user_model_args(p: argparse.ArgumentParser) -> None:
    """--weights and --split: for checkpoints of a user's model (``train-head --model``)."""
    p.add_argument("--weights", type=Path, default=None,
                   help="a user model's weights file (default: the path the checkpoint was trained with, else the "
                        "file of that name beside it; another file than the one trained on is refused)")
    p.add_argument("--split", default=None,
                   help="first-level folder of --data to read (default: 'test' for CIFAR-10 checkpoints; for a "
                        "user's model, --data as given)")


def eval_images(args, purifier, n: int | None):
    """The labelled images ``demo`` and ``eval`` attack: CIFAR-10's test split for the shipped
    checkpoints; for a user's model, --data in ImageFolder layout at the checkpoint's size,
    its classes (folders named as the checkpoint's class names) labelled in its order."""
    from ..data import load_cifar10
    from ..image_folders import load_images
    from ..models.checkpoint import model_name

    manifest = purifier.manifest
    if "model_source" not in manifest:
        return load_cifar10(cifar10_data(args), args.split or "test", limit=n)
    if args.data is None:
        from ..errors import UsageError

        raise UsageError(f"{manifest['path']} defends {model_name(manifest)}: give its images with --data "
                         "(a folder or zip of <class>/<image>)")
    return load_images(args.data, manifest["image_size"][0], args.split, limit=n, classes=manifest["class_names"])


def add_default_checkpoint(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--checkpoint for the commands that fall back to pyengine.demo.DEFAULT_CHECKPOINT."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"{what}default: the shipped FGSM-RS checkpoint (pyengine.demo.DEFAULT_CHECKPOINT); "
                             "a shipped checkpoint may be named by its file name")


def add_device_arg(parser: argparse.ArgumentParser, default: str = "cuda when present") -> None:
    parser.add_argument("--device", default=None, help=f"cpu or cuda (default: {default})")


def device(args):
    """--device, or CUDA when present; UsageError for a device that does not exist here."""
    import torch

    from ..errors import UsageError

    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} asked for, but CUDA is not available")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if chosen.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: pyengine runs on cpu or cuda")
    return chosen


def torch_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
