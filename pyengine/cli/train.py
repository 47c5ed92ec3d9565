"""``pyengine train-classifier`` and ``pyengine train-head``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..provenance import relative_path
from ..errors import UsageError
from .common import add_data_args, add_device_arg, cifar10_data, device, torch_threads
from .flags import BATCH, COUNT, RADIUS, SEED, THREADS, check_output_file, int_in, number_in


def _triple(text: str) -> tuple[float, float, float]:
    """--mean/--std: three comma-separated numbers (one per RGB channel)."""
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return tuple(number_in(-10, 10)(p) for p in parts)


def _add_run_args(p: argparse.ArgumentParser, command) -> None:
    """The flags both training commands end with: seed, precision, threads, device, data."""
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="bf16: forward passes under bf16 autocast (weights and optimizer stay fp32); faster "
                        "where the hardware has native bf16 (GPUs, CPUs with AVX512-BF16 or AMX), an order of "
                        "magnitude slower elsewhere; auto: bf16 where it is native, else fp32")
    p.add_argument("--threads", type=THREADS, default=None)
    add_device_arg(p)
    add_data_args(p)
    p.set_defaults(func=command)


def _cmd_train_classifier(args) -> None:
    from ..data import load_cifar10
    from ..models import create_model
    from ..train import train_classifier

    torch_threads(args)
    check_output_file(args.out)
    model = create_model(args.model).to(device(args))
    if args.compile:
        model.compile()  # in place: the state dict and the saved checkpoint keep their names
    config = train_config(args)
    # On the training device, so batches are gathered, cropped and flipped there.
    train = load_cifar10(cifar10_data(args), "train", limit=args.limit).to(device(args))
    test = load_cifar10(args.data, "test", limit=args.test_limit)
    metrics = train_classifier(model, train, args.out, config, test=test,
                               manifest={"dataset": f"CIFAR-10 from {relative_path(args.data)}"})
    print(f"saved {args.out}: {metrics}")


def train_config(args) -> "ClassifierTrainConfig":
    """The flags of ``train-classifier``: a flag given wins, then the architecture's recipe
    (ModelConfig.train_recipe), then ClassifierTrainConfig's default."""
    from ..models import model_config
    from ..train import ClassifierTrainConfig

    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing}
    recipe = {**model_config(args.model).train_recipe, **{k: v for k, v in given.items() if v is not None}}
    return ClassifierTrainConfig(adversarial=args.adversarial, eps=args.eps, seed=args.seed,
                                 aux=args.aux, alpha=args.alpha, noise_sigma=args.noise_sigma,
                                 schedule=args.schedule, precision=args.precision, **recipe)


def _head_config(args) -> "HeadTrainConfig":
    from ..train import HeadTrainConfig

    return HeadTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, n_views=args.views,
                           temperature=args.temperature, seed=args.seed, precision=args.precision)


def _cmd_train_head(args) -> None:
    from ..data import load_cifar10
    from ..models import ContrastiveHead, model_config
    from ..models.checkpoint import load_checkpoint
    from ..train import train_head

    torch_threads(args)
    check_output_file(args.out)
    if (args.checkpoint is None) == (args.model is None):
        raise UsageError("give --checkpoint (a pyengine classifier checkpoint) or --model (your own model), not both")
    if args.model is not None:
        return _train_head_for_model(args)
    for flag in ("weights", "image_size", "layer", "mean", "std", "classes", "split"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} goes with --model (your own model), not --checkpoint")
    on = device(args)
    ckpt = load_checkpoint(args.checkpoint, map_location=on)
    cfg = model_config(ckpt.manifest["architecture"])
    head = ContrastiveHead(ckpt.classifier.num_features, args.hidden or cfg.head_hidden,
                           args.dim or cfg.head_out).to(on)
    train = load_cifar10(cifar10_data(args), "train", limit=args.limit).to(on)
    kept = {k: ckpt.manifest[k] for k in ("training", "metrics", "dataset", "provenance") if k in ckpt.manifest}
    metrics = train_head(ckpt.classifier, head, train, args.out, _head_config(args), manifest=kept)
    print(f"saved {args.out}: {metrics}")


def _train_head_for_model(args) -> None:
    """train-head --model: G and the bank for a user's model on its images (pyengine.defend)."""
    from ..defend import HEAD_HIDDEN, HEAD_OUT, train_head_for_model
    from ..image_folders import load_images

    if args.image_size is None:
        raise UsageError("--model needs --image-size (the side of the square images the model sees)")
    if args.data is None:
        raise UsageError("--model needs --data: a folder or zip of <class>/<image> (ImageFolder layout)")
    classes = [c for c in args.classes.split(",") if c] if args.classes else None
    data = load_images(args.data, args.image_size, args.split, limit=args.limit, classes=classes)
    print(f"{len(data)} images of {len(data.class_names)} classes from {args.data}, at {args.image_size}x{args.image_size}")
    metrics = train_head_for_model(args.model, data, args.out, weights=args.weights, config=_head_config(args),
                                   layer=args.layer, mean=args.mean, std=args.std,
                                   hidden=args.hidden or HEAD_HIDDEN, dim=args.dim or HEAD_OUT, device=device(args),
                                   dataset=f"{relative_path(args.data)}{'/' + args.split if args.split else ''}")
    print(f"saved {args.out}: {metrics}")


def register(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a classifier (standard or FGSM-RS adversarial)")
    p.add_argument("--model", default="preact_resnet_tiny")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int_in(1, 100_000), default=None, help="default: the model's recipe, else 15")
    p.add_argument("--batch-size", type=BATCH, default=None, help="default: the model's recipe, else 128")
    p.add_argument("--lr", type=number_in(0, 100, open_low=True), default=None,
                   help="peak of the one-cycle schedule, or the start of 'step' (default: the model's recipe, else 0.2)")
    p.add_argument("--label-smoothing", type=number_in(0, 1, open_high=True), default=None,
                   help="default: the model's recipe, else 0")
    p.add_argument("--adversarial", choices=("none", "fgsm"), default="none")
    p.add_argument("--eps", type=RADIUS, default=8 / 255)
    p.add_argument("--aux", choices=("rotation", "consistency", "reconstruction"), default=None,
                   help="SOAP joint training (Shi et al. Eq. 2) with this auxiliary task")
    p.add_argument("--alpha", type=number_in(0, 1e6), default=None,
                   help="weight of the auxiliary loss (default: the paper's: rotation 0.5, consistency 1, "
                        "reconstruction 100)")
    p.add_argument("--noise-sigma", type=number_in(0, 10), default=None,
                   help="Gaussian input corruption for --aux (default: 0.1; reconstruction 0.5)")
    p.add_argument("--schedule", choices=("onecycle", "step"), default="onecycle",
                   help="learning-rate schedule; 'step' is the paper's (x0.1 at 1/2 and 3/4 of the epochs, "
                        "use with --lr 0.1 --weight-decay 1e-4)")
    p.add_argument("--weight-decay", type=number_in(0, 1), default=None, help="default: the model's recipe, else 5e-4")
    p.add_argument("--limit", type=COUNT, default=None, help="train on the first N images only")
    p.add_argument("--test-limit", type=COUNT, default=None, help="evaluate on the first N test images only")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (pays on GPUs for long runs; each graph compiles first)")
    _add_run_args(p, _cmd_train_classifier)

    p = sub.add_parser("train-head", help="train the contrastive head G on a frozen classifier")
    p.add_argument("--checkpoint", type=Path, default=None, help="a pyengine classifier checkpoint (CIFAR-10)")
    p.add_argument("--model", default=None,
                   help="or your own model: timm:NAME or torchvision:NAME (with --weights), a registry name, or a "
                        "torch.export .pt2 / TorchScript file; nothing is downloaded")
    p.add_argument("--weights", type=Path, default=None,
                   help="--model's weights: a safetensors file or a torch.save state dict")
    p.add_argument("--image-size", type=int_in(8, 1024), default=None,
                   help="--model: images are resized (shorter side) and centre-cropped to this square size")
    p.add_argument("--layer", default=None,
                   help="--model: the module (a .pt2: graph node) whose output are the features (default: the "
                        "input of the last nn.Linear)")
    p.add_argument("--mean", type=_triple, default=None,
                   help="--model: input normalisation mean, e.g. 0.485,0.456,0.406 (default: timm's pretrained_cfg "
                        "or torchvision's weights' values; none for .pt2/TorchScript)")
    p.add_argument("--std", type=_triple, default=None, help="--model: input normalisation std (see --mean)")
    p.add_argument("--classes", default=None,
                   help="--model: comma-separated class folders to use, in the model's class order (default: "
                        "every folder, sorted)")
    p.add_argument("--split", default=None, help="--model: first-level folder of --data (e.g. train)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int_in(1, 100_000), default=5)
    p.add_argument("--batch-size", type=int_in(2, 1 << 16), default=1024, help="at least 2: the other images "
                                                                              "are the negatives")
    p.add_argument("--lr", type=number_in(0, 100, open_low=True), default=1e-4)
    p.add_argument("--views", type=int_in(2, 64), default=4)
    p.add_argument("--temperature", type=number_in(0, 100, open_low=True), default=0.2)
    p.add_argument("--hidden", type=int_in(1, 1 << 16), default=None,
                   help="default: the architecture's head size; --model: 128")
    p.add_argument("--dim", type=int_in(1, 1 << 16), default=None, help="default: the architecture's head size; "
                                                                        "--model: 8")
    p.add_argument("--limit", type=COUNT, default=None)
    _add_run_args(p, _cmd_train_head)
