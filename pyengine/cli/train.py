"""``pyengine train-classifier`` and ``pyengine train-head``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..provenance import relative_path
from .common import add_data_args, add_device_arg, device, torch_threads
from .flags import BATCH, COUNT, RADIUS, SEED, THREADS, check_output_file, int_in, number_in


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
    train = load_cifar10(args.data, "train", limit=args.limit).to(device(args))
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


def _cmd_train_head(args) -> None:
    from ..data import load_cifar10
    from ..models import ContrastiveHead, model_config
    from ..models.checkpoint import load_checkpoint
    from ..train import HeadTrainConfig, train_head

    torch_threads(args)
    check_output_file(args.out)
    on = device(args)
    ckpt = load_checkpoint(args.checkpoint, map_location=on)
    cfg = model_config(ckpt.manifest["architecture"])
    head = ContrastiveHead(ckpt.classifier.num_features, args.hidden or cfg.head_hidden,
                           args.dim or cfg.head_out).to(on)
    config = HeadTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             n_views=args.views, temperature=args.temperature, seed=args.seed,
                             precision=args.precision)
    train = load_cifar10(args.data, "train", limit=args.limit).to(on)
    kept = {k: ckpt.manifest[k] for k in ("training", "metrics", "dataset", "provenance") if k in ckpt.manifest}
    metrics = train_head(ckpt.classifier, head, train, args.out, config, manifest=kept)
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
    p.add_argument("--checkpoint", type=Path, required=True, help="classifier checkpoint")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int_in(1, 100_000), default=5)
    p.add_argument("--batch-size", type=int_in(2, 1 << 16), default=1024, help="at least 2: the other images "
                                                                              "are the negatives")
    p.add_argument("--lr", type=number_in(0, 100, open_low=True), default=1e-4)
    p.add_argument("--views", type=int_in(2, 64), default=4)
    p.add_argument("--temperature", type=number_in(0, 100, open_low=True), default=0.2)
    p.add_argument("--hidden", type=int_in(1, 1 << 16), default=None, help="default: the architecture's head size")
    p.add_argument("--dim", type=int_in(1, 1 << 16), default=None, help="default: the architecture's head size")
    p.add_argument("--limit", type=COUNT, default=None)
    _add_run_args(p, _cmd_train_head)
