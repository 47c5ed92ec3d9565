"""``pyengine`` command line: a thin layer over the public API."""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

# The Purifier's precisions (pyengine.purify.purifier.PRECISIONS and "auto"), spelled out so
# that parsing the command line does not import torch.
PURIFIER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10"


def parse_fraction(text: str) -> float:
    """Accept ``8/255`` as well as ``0.0314``."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.03 or 8/255, got {text!r}") from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="CIFAR-10 source: cifar-10-batches-py folder, image folder or zip folder "
                        "(default: %(default)s)")


def _add_purifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps-v", type=parse_fraction, default=None,
                   help="purification radius (default: 16/255 for contrastive checkpoints; SOAP's min-aux picks its own)")
    p.add_argument("--steps", type=int, default=None,
                   help="purification steps (default: K=40 contrastive, T=5 SOAP)")
    p.add_argument("--precision", choices=PURIFIER_PRECISIONS, default=None,
                   help="the contrastive purifier's backbone precision (default: auto, bf16 on CUDA and fp32 "
                        "elsewhere; SOAP runs in fp32)")


def _add_train_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: forward passes under bf16 autocast (weights and optimizer stay fp32); faster "
                        "where the hardware has native bf16 (GPUs, CPUs with AVX512-BF16 or AMX)")


def _cmd_train_classifier(args) -> None:
    from .data import load_cifar10
    from .models import create_model
    from .train import ClassifierTrainConfig, train_classifier

    torch_threads(args)
    model = create_model(args.model).to(_device(args))
    config = ClassifierTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   adversarial=args.adversarial, eps=args.eps, seed=args.seed,
                                   aux=args.aux, alpha=args.alpha, noise_sigma=args.noise_sigma,
                                   schedule=args.schedule, precision=args.precision)
    if args.weight_decay is not None:
        config.weight_decay = args.weight_decay
    train = load_cifar10(args.data, "train", limit=args.limit)
    test = load_cifar10(args.data, "test", limit=args.test_limit)
    metrics = train_classifier(model, train, args.out, config, test=test,
                               manifest={"dataset": f"CIFAR-10 from {args.data}"})
    print(f"saved {args.out}: {metrics}")


def _cmd_train_head(args) -> None:
    from .data import load_cifar10
    from .models import ContrastiveHead, model_config
    from .models.checkpoint import load_checkpoint
    from .train import HeadTrainConfig, train_head

    torch_threads(args)
    device = _device(args)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    cfg = model_config(ckpt.manifest["architecture"])
    head = ContrastiveHead(ckpt.classifier.num_features, args.hidden or cfg.head_hidden,
                           args.dim or cfg.head_out).to(device)
    config = HeadTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             n_views=args.views, temperature=args.temperature, seed=args.seed,
                             precision=args.precision)
    train = load_cifar10(args.data, "train", limit=args.limit)
    kept = {k: ckpt.manifest[k] for k in ("training", "metrics", "dataset") if k in ckpt.manifest}
    metrics = train_head(ckpt.classifier, head, train, args.out, config, manifest=kept)
    print(f"saved {args.out}: {metrics}")


def _cmd_demo(args) -> None:
    from .data import load_cifar10
    from .demo import DEFAULT_CHECKPOINT, run_demo
    from .loading import load_purifier

    torch_threads(args)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    purifier = load_purifier(checkpoint, steps=args.steps, eps_v=args.eps_v,
                             precision=args.precision)
    data = load_cifar10(args.data, "test", limit=args.n)
    name = purifier.manifest["architecture"]
    print(f"pyengine demo: {name} from {checkpoint}\n"
          f"{len(data)} CIFAR-10 test images from {args.data}; attack: PGD-{args.attack_steps} L-inf "
          f"eps {args.eps:.4f} on the undefended classifier (static)\n"
          f"purification: {type(purifier.objective).__name__}, {purifier.extra_repr()}")
    result = run_demo(purifier, data, attack_eps=args.eps, attack_steps=args.attack_steps,
                      batch_size=args.batch_size, seed=args.seed)
    print(result.table())
    print(f"{result.n} images in {result.seconds:.1f} s")


def _cmd_eval(args) -> None:
    from .data import load_cifar10
    from .demo import DEFAULT_CHECKPOINT
    from .evaluation import EvalConfig, evaluate, markdown_table
    from .loading import load_purifier

    from .distributed import world

    torch_threads(args)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    from .attacks import expand_specs

    config = EvalConfig(attacks=expand_specs(args.attacks), eps=args.eps, norm=args.norm,
                        n=args.n, batch_size=args.batch_size, seed=args.seed, checkpoint=str(checkpoint))
    data = load_cifar10(args.data, "test", limit=args.n)
    with world(args.device) as w:
        purifier = load_purifier(checkpoint, map_location=w.device, steps=args.steps, eps_v=args.eps_v,
                                 precision=args.precision)
        summary = evaluate(purifier, data, config, args.out, rank=w.rank, world_size=w.world_size,
                           figure_images=args.figures, manifest=purifier.manifest)
    if summary is None:
        return
    print(markdown_table(summary))
    print(f"report: {args.out / 'table.md'}, {args.out / 'results.json'}"
          + (f", figures in {args.out / 'figures'}" if args.figures else ""))


def _cmd_purify(args) -> None:
    from .batch import purify_images
    from .demo import DEFAULT_CHECKPOINT
    from .distributed import world
    from .loading import load_purifier

    torch_threads(args)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    with world(args.device) as w:
        purifier = load_purifier(checkpoint, map_location=w.device, steps=args.steps, eps_v=args.eps_v,
                                 precision=args.precision)
        summary = purify_images(purifier, args.input, args.out, batch_size=args.batch_size, seed=args.seed,
                                rank=w.rank, world_size=w.world_size, settings={"checkpoint": str(checkpoint)})
    if summary is None:
        return
    accuracy = "" if summary["accuracy"] is None else f", accuracy {summary['accuracy']:.1%}"
    print(f"{summary['images']} images purified{accuracy}; mean L_s {summary['loss_before']:.4f} -> "
          f"{summary['loss_after']:.4f}\npredictions: {summary['predictions']}, images in {summary['images_dir']}")

def _cmd_bench(args) -> None:
    from .bench_table import load_rows, markdown

    try:
        print(markdown(load_rows(*args.json), args.peak_tflops))
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"pyengine bench: error: cannot read {', '.join(map(str, args.json))}: {err}")


def _cmd_parity(args) -> None:
    import json

    from .data import load_cifar10
    from .demo import DEFAULT_CHECKPOINT
    from .evaluation.parity import check_parity, load_paths, markdown

    torch_threads(args)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    reference, fast = load_paths(checkpoint, _device(args), precision=args.precision, compile=args.compile)
    data = load_cifar10(args.data, "test", limit=args.n)
    report = check_parity(reference, fast, data, attack=args.attack, eps=args.eps, batch_size=args.batch_size,
                          seed=args.seed, tolerance=args.tolerance, robust_only=args.robust_only)
    report["checkpoint"], report["data"] = str(checkpoint), f"CIFAR-10 test (JPEG copy) from {args.data}"
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"report: {args.out}")
    if not report["passed"]:
        raise SystemExit(1)


def _device(args):
    """--device, or CUDA when present; a clear error when CUDA is asked for and missing."""
    import torch

    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"pyengine {args.command}: error: --device {args.device} asked for, but CUDA is not available")
    return device


def _cmd_results(args) -> None:
    from .evaluation.paper import results_markdown

    text = results_markdown(args.runs, args.device_name)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)


def torch_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)


def _add_default_checkpoint(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--checkpoint for the commands that fall back to pyengine.demo.DEFAULT_CHECKPOINT."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"{what}default: the shipped FGSM-RS checkpoint (pyengine.demo.DEFAULT_CHECKPOINT)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-classifier", help="train a classifier (standard or FGSM-RS adversarial)")
    p.add_argument("--model", default="preact_resnet_tiny")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2, help="peak of the one-cycle schedule, or the start of 'step'")
    p.add_argument("--adversarial", choices=("none", "fgsm"), default="none")
    p.add_argument("--eps", type=parse_fraction, default=8 / 255)
    p.add_argument("--aux", choices=("rotation", "consistency", "reconstruction"), default=None,
                   help="SOAP joint training (Shi et al. Eq. 2) with this auxiliary task")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the auxiliary loss (default: the paper's: rotation 0.5, consistency 1, "
                        "reconstruction 100)")
    p.add_argument("--noise-sigma", type=float, default=None,
                   help="Gaussian input corruption for --aux (default: 0.1; reconstruction 0.5)")
    p.add_argument("--schedule", choices=("onecycle", "step"), default="onecycle",
                   help="learning-rate schedule; 'step' is the paper's (x0.1 at 1/2 and 3/4 of the epochs, "
                        "use with --lr 0.1 --weight-decay 1e-4)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 5e-4")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--seed", type=int, default=0)
    _add_train_precision_arg(p)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    _add_data_args(p)
    p.set_defaults(func=_cmd_train_classifier)

    p = sub.add_parser("train-head", help="train the contrastive head G on a frozen classifier")
    p.add_argument("--checkpoint", type=Path, required=True, help="classifier checkpoint")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--hidden", type=int, default=None, help="default: the architecture's head size")
    p.add_argument("--dim", type=int, default=None, help="default: the architecture's head size")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_train_precision_arg(p)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    _add_data_args(p)
    p.set_defaults(func=_cmd_train_head)

    p = sub.add_parser("demo", help="attack, purify and compare on CIFAR-10 test images")
    _add_default_checkpoint(p)
    p.add_argument("--n", type=int, default=100, help="number of test images")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--eps", type=parse_fraction, default=8 / 255, help="attack radius (L-inf)")
    p.add_argument("--attack-steps", type=int, default=10)
    _add_purifier_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    _add_data_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="static and adaptive attacks on the purified classifier: table, JSON, figures")
    _add_default_checkpoint(p)
    p.add_argument("--attacks", default="pgd50,bpda-pgd50,transfer-pgd50",
                   help="comma-separated attack specs; 'adaptive' adds the adaptive suite "
                        "(grammar: pyengine.attacks.suite)")
    p.add_argument("--eps", type=parse_fraction, default=8 / 255)
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    # --num-images: torchrun's own parser takes a bare --n for an abbreviation of --nnodes.
    p.add_argument("--n", "--num-images", dest="n", type=int, default=1000, help="number of test images")
    p.add_argument("--batch-size", type=int, default=100)
    _add_purifier_args(p)
    p.add_argument("--figures", type=int, default=0, metavar="N",
                   help="also draw the papers' figures on the first N images (0: none)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda under torchrun when present)")
    p.add_argument("--threads", type=int, default=None)
    _add_data_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("purify", help="purify a folder or zip of images: purified PNGs and predictions.csv")
    p.add_argument("input", type=Path, help="folder or zip of *.png/*.jpg/*.jpeg at any depth; <class>/<file> "
                                            "with CIFAR-10 class names adds labels and accuracy")
    _add_default_checkpoint(p)
    p.add_argument("--out", type=Path, required=True,
                   help="writes images/<path>.png, predictions.csv, summary.json; rerun to resume")
    p.add_argument("--batch-size", type=int, default=100)
    _add_purifier_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda under torchrun when present)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_purify)
    p = sub.add_parser("bench", help="table of engine vs published-loop purification speed from a benchmark JSON")
    p.add_argument("json", type=Path, nargs="+", help="written by: python -m pytest bench/test_bench_purify.py "
                                                      "--benchmark-only --benchmark-json FILE")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the roofline fraction")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("parity", help="robust-accuracy gain of the fast path (bf16, CUDA graph) vs the fp32 "
                                      "reference path; exit status 1 when it differs by more than the tolerance")
    _add_default_checkpoint(p, "contrastive checkpoint; ")
    _add_data_args(p)
    p.add_argument("--n", "--num-images", dest="n", type=int, default=1000, help="test images (default: %(default)s)")
    p.add_argument("--attack", default="pgd10", help="static attack spec (default: %(default)s)")
    p.add_argument("--eps", type=parse_fraction, default=8 / 255, help="attack budget (default: 8/255)")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed gain difference in points (default: 0.5)")
    p.add_argument("--precision", choices=PURIFIER_PRECISIONS, default="auto",
                   help="the fast path's precision (default: auto, bf16 on CUDA)")
    p.add_argument("--compile", action="store_true", help="the fast path compiles its backbone (torch.compile)")
    p.add_argument("--robust-only", action="store_true", help="purify only the attacked images (half the time)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("results", help="docs/RESULTS.md: our evaluation runs beside the papers' numbers")
    p.add_argument("runs", type=Path, help="root holding <setting>/results.json (scripts/reproduce_papers.sh)")
    p.add_argument("--device-name", default="an unnamed machine", help="the machine the runs used, for the text")
    p.add_argument("--out", type=Path, default=None, help="write here instead of printing")
    p.set_defaults(func=_cmd_results)

    from .deploy.cli import register as register_export
    register_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .models.checkpoint import CheckpointError
    from .resume import RunFolderError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, CheckpointError, RunFolderError) as err:
        print(f"pyengine {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
