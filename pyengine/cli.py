"""``pyengine`` command line: a thin layer over the public API.

Error policy (:mod:`pyengine.errors`): a user error prints ``pyengine <command>: error: ...``
on one line and exits with status 2; every number a user types is checked against bounds
when the flags are parsed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .flags import BATCH, COUNT, PURIFY_STEPS, RADIUS, SEED, THREADS, check_output_file, int_in, number_in
from .provenance import record_command, relative_path

# The Purifier's precisions (pyengine.purify.purifier.PRECISIONS and "auto"), spelled out so
# that parsing the command line does not import torch.
PURIFIER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="CIFAR-10 source: cifar-10-batches-py folder, image folder or zip folder "
                        "(default: %(default)s)")


def _add_purifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps-v", type=RADIUS, default=None,
                   help="contrastive purification radius, step eps_v / 8 (default: 16/255; refused for SOAP "
                        "checkpoints, whose min-aux picks its own)")
    p.add_argument("--steps", type=PURIFY_STEPS, default=None,
                   help="purification steps (default: K=40 contrastive, T=5 SOAP)")
    p.add_argument("--precision", choices=PURIFIER_PRECISIONS, default=None,
                   help="the contrastive purifier's backbone precision (default: auto, bf16 on CUDA and fp32 "
                        "elsewhere; SOAP runs in fp32)")


def _add_train_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="bf16: forward passes under bf16 autocast (weights and optimizer stay fp32); faster "
                        "where the hardware has native bf16 (GPUs, CPUs with AVX512-BF16 or AMX), an order of "
                        "magnitude slower elsewhere; auto: bf16 where it is native, else fp32")


def _cmd_train_classifier(args) -> None:
    from .data import load_cifar10
    from .models import create_model
    from .train import train_classifier

    torch_threads(args)
    check_output_file(args.out)
    model = create_model(args.model).to(_device(args))
    if args.compile:
        model.compile()  # in place: the state dict and the saved checkpoint keep their names
    config = train_config(args)
    # On the training device, so batches are gathered, cropped and flipped there.
    train = load_cifar10(args.data, "train", limit=args.limit).to(_device(args))
    test = load_cifar10(args.data, "test", limit=args.test_limit)
    metrics = train_classifier(model, train, args.out, config, test=test,
                               manifest={"dataset": f"CIFAR-10 from {relative_path(args.data)}"})
    print(f"saved {args.out}: {metrics}")


def train_config(args) -> "ClassifierTrainConfig":
    """The flags of ``train-classifier``: a flag given wins, then the architecture's recipe
    (ModelConfig.train_recipe), then ClassifierTrainConfig's default."""
    from .models import model_config
    from .train import ClassifierTrainConfig

    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing}
    recipe = {**model_config(args.model).train_recipe, **{k: v for k, v in given.items() if v is not None}}
    return ClassifierTrainConfig(adversarial=args.adversarial, eps=args.eps, seed=args.seed,
                                 aux=args.aux, alpha=args.alpha, noise_sigma=args.noise_sigma,
                                 schedule=args.schedule, precision=args.precision, **recipe)


def _cmd_train_head(args) -> None:
    from .data import load_cifar10
    from .models import ContrastiveHead, model_config
    from .models.checkpoint import load_checkpoint
    from .train import HeadTrainConfig, train_head

    torch_threads(args)
    check_output_file(args.out)
    device = _device(args)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    cfg = model_config(ckpt.manifest["architecture"])
    head = ContrastiveHead(ckpt.classifier.num_features, args.hidden or cfg.head_hidden,
                           args.dim or cfg.head_out).to(device)
    config = HeadTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             n_views=args.views, temperature=args.temperature, seed=args.seed,
                             precision=args.precision)
    train = load_cifar10(args.data, "train", limit=args.limit).to(device)
    kept = {k: ckpt.manifest[k] for k in ("training", "metrics", "dataset", "provenance") if k in ckpt.manifest}
    metrics = train_head(ckpt.classifier, head, train, args.out, config, manifest=kept)
    print(f"saved {args.out}: {metrics}")


def _cmd_demo(args) -> None:
    from .data import load_cifar10
    from .demo import default_checkpoint, run_demo
    from .loading import load_purifier

    torch_threads(args)
    checkpoint = args.checkpoint or default_checkpoint()
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
    _device(args)  # a device that cannot work is refused before anything loads
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
    _device(args)  # a device that cannot work is refused before anything loads
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
          f"{summary['loss_after']:.4f}\npredictions: {args.out / summary['predictions']}, "
          f"images in {args.out / summary['images_dir']}")

def _cmd_bench(args) -> None:
    from .bench_table import load_rows, markdown

    try:
        print(markdown(load_rows(*args.json), args.peak_tflops))
    except (OSError, ValueError, KeyError) as err:
        from .errors import UsageError

        raise UsageError(f"cannot read {', '.join(map(str, args.json))}: {err}") from err


def _cmd_parity(args) -> None:
    import json

    from .data import load_cifar10
    from .demo import DEFAULT_CHECKPOINT
    from .evaluation.parity import check_parity, load_paths, markdown

    torch_threads(args)
    if args.out:
        check_output_file(args.out)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    reference, fast = load_paths(checkpoint, _device(args), precision=args.precision, compile=args.compile)
    data = load_cifar10(args.data, "test", limit=args.n)
    report = check_parity(reference, fast, data, attack=args.attack, eps=args.eps, batch_size=args.batch_size,
                          seed=args.seed, tolerance=args.tolerance, robust_only=args.robust_only)
    report["checkpoint"] = relative_path(checkpoint)
    report["data"] = f"CIFAR-10 test (JPEG copy) from {relative_path(args.data)}"
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"report: {args.out}")
    if not report["passed"]:
        raise SystemExit(1)


def _device(args):
    """--device, or CUDA when present; UsageError for a device that does not exist here."""
    import torch

    from .errors import UsageError

    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: pyengine runs on cpu or cuda")
    return device


def _cmd_results(args) -> None:
    from .evaluation.paper import results_markdown

    if args.out:
        check_output_file(args.out)
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
    p.add_argument("--seed", type=SEED, default=0)
    _add_train_precision_arg(p)
    p.add_argument("--threads", type=THREADS, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    _add_data_args(p)
    p.set_defaults(func=_cmd_train_classifier)

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
    p.add_argument("--seed", type=SEED, default=0)
    _add_train_precision_arg(p)
    p.add_argument("--threads", type=THREADS, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    _add_data_args(p)
    p.set_defaults(func=_cmd_train_head)

    p = sub.add_parser("demo", help="attack, purify and compare on CIFAR-10 test images")
    _add_default_checkpoint(p, "with CUDA, the GPU-trained PreAct-ResNet-18 FGSM-RS one where it is shipped "
                               "(pyengine.demo.GPU_CHECKPOINT); otherwise ")
    p.add_argument("--n", type=COUNT, default=100, help="number of test images")
    p.add_argument("--batch-size", type=BATCH, default=50)
    p.add_argument("--eps", type=RADIUS, default=8 / 255, help="attack radius (L-inf)")
    p.add_argument("--attack-steps", type=int_in(1, 10_000), default=10)
    _add_purifier_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--threads", type=THREADS, default=None)
    _add_data_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="static and adaptive attacks on the purified classifier: table, JSON, figures")
    _add_default_checkpoint(p)
    p.add_argument("--attacks", default="pgd50,bpda-pgd50,transfer-pgd50",
                   help="comma-separated attack specs; 'adaptive' adds the adaptive suite "
                        "(grammar: pyengine.attacks.suite)")
    p.add_argument("--eps", type=RADIUS, default=8 / 255)
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    # --num-images: torchrun's own parser takes a bare --n for an abbreviation of --nnodes.
    p.add_argument("--n", "--num-images", dest="n", type=COUNT, default=1000, help="number of test images")
    p.add_argument("--batch-size", type=BATCH, default=100)
    _add_purifier_args(p)
    p.add_argument("--figures", type=int_in(0, 100_000), default=0, metavar="N",
                   help="also draw the papers' figures on the first N images (0: none)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda under torchrun when present)")
    p.add_argument("--threads", type=THREADS, default=None)
    _add_data_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("purify", help="purify a folder or zip of images: purified PNGs and predictions.csv")
    p.add_argument("input", type=Path, help="folder or zip of *.png/*.jpg/*.jpeg at any depth; <class>/<file> "
                                            "with CIFAR-10 class names adds labels and accuracy")
    _add_default_checkpoint(p)
    p.add_argument("--out", type=Path, required=True,
                   help="writes images/<path>.png, predictions.csv, summary.json; rerun to resume")
    p.add_argument("--batch-size", type=BATCH, default=100)
    _add_purifier_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda under torchrun when present)")
    p.add_argument("--threads", type=THREADS, default=None)
    p.set_defaults(func=_cmd_purify)
    p = sub.add_parser("bench", help="table of engine vs published-loop purification speed from a benchmark JSON")
    p.add_argument("json", type=Path, nargs="+", help="written by: python -m pytest bench/test_bench_purify.py "
                                                      "--benchmark-only --benchmark-json FILE")
    p.add_argument("--peak-tflops", type=number_in(0, 1e9, open_low=True), default=None,
                   help="the device's peak, for the roofline fraction")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("parity", help="robust-accuracy gain of the fast path (bf16, CUDA graph) vs the fp32 "
                                      "reference path; exit status 1 when it differs by more than the tolerance")
    _add_default_checkpoint(p, "contrastive checkpoint; ")
    _add_data_args(p)
    p.add_argument("--n", "--num-images", dest="n", type=COUNT, default=1000, help="test images (default: %(default)s)")
    p.add_argument("--attack", default="pgd10", help="static attack spec (default: %(default)s)")
    p.add_argument("--eps", type=RADIUS, default=8 / 255, help="attack budget (default: 8/255)")
    p.add_argument("--tolerance", type=number_in(0, 100), default=0.5,
                   help="allowed gain difference in points (default: 0.5)")
    p.add_argument("--precision", choices=PURIFIER_PRECISIONS, default="auto",
                   help="the fast path's precision (default: auto, bf16 on CUDA)")
    p.add_argument("--compile", action="store_true", help="the fast path compiles its backbone (torch.compile)")
    p.add_argument("--robust-only", action="store_true", help="purify only the attacked images (half the time)")
    p.add_argument("--batch-size", type=BATCH, default=500)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--threads", type=THREADS, default=None)
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
    """Run a command; -> 0, or 2 after a user error printed in one line (:mod:`pyengine.errors`)."""
    from .errors import USER_ERRORS, report

    args = build_parser().parse_args(argv)
    try:
        with record_command(["pyengine", *(sys.argv[1:] if argv is None else argv)]):
            args.func(args)
    except USER_ERRORS as err:
        return report(args.command, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
