"""What several command groups share: the data, checkpoint, purifier and device flags, and
reading the device and thread flags."""
from __future__ import annotations

import argparse
from pathlib import Path

from .flags import NORM_RADIUS, PURIFY_STEPS

# The Purifier's precisions (pyengine.purify.purifier.PRECISIONS and "auto"), spelled out so
# that parsing the command line does not import torch.
PURIFIER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="CIFAR-10 source: cifar-10-batches-py folder, image folder or zip folder "
                        "(default: %(default)s)")


def add_purifier_args(p: argparse.ArgumentParser) -> None:
    """--eps-v, --steps, --precision: :func:`pyengine.load_purifier`'s keywords, its defaults."""
    p.add_argument("--eps-v", type=NORM_RADIUS, default=None,
                   help="contrastive purification radius, in the attack's norm; its step follows (eps_v / 8 "
                        "L-inf, eps_v / 256 L2) (default: 2 x --eps where there is one, else 16/255; refused for "
                        "SOAP checkpoints, whose min-aux picks its own)")
    p.add_argument("--steps", type=PURIFY_STEPS, default=None,
                   help="purification steps (default: K=40 contrastive, T=5 SOAP)")
    p.add_argument("--precision", choices=PURIFIER_PRECISIONS, default=None,
                   help="the contrastive purifier's backbone precision (default: auto, bf16 on CUDA and fp32 "
                        "elsewhere; SOAP runs in fp32)")


def add_default_checkpoint(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--checkpoint for the commands that fall back to pyengine.demo.DEFAULT_CHECKPOINT."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"{what}default: the shipped FGSM-RS checkpoint (pyengine.demo.DEFAULT_CHECKPOINT)")


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
