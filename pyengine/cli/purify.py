"""``pyengine demo``, ``pyengine eval`` and ``pyengine purify``: a purifier from a checkpoint
(:func:`pyengine.load_purifier`) run on images."""
from __future__ import annotations

from pathlib import Path

from .common import (add_data_args, add_default_checkpoint, add_device_arg, add_purifier_args, add_user_model_args,
                     device, eval_images, torch_threads)
from .flags import BATCH, COUNT, NORM_RADIUS, RADIUS, SEED, THREADS, int_in


def _purifier(args, checkpoint, map_location="cpu", **threat):
    """``threat``: eval's ``attack_eps`` and ``attack_norm`` (eps_v = 2 eps in that norm)."""
    from ..loading import load_purifier

    return load_purifier(checkpoint, map_location=map_location, steps=args.steps, eps_v=args.eps_v,
                         precision=args.precision, weights=args.weights, **threat)


def _cmd_demo(args) -> None:
    from ..demo import default_checkpoint, run_demo
    from ..models.checkpoint import model_name

    torch_threads(args)
    checkpoint = args.checkpoint or default_checkpoint()
    purifier = _purifier(args, checkpoint, attack_eps=args.eps)
    data = eval_images(args, purifier, args.n)
    what = "CIFAR-10 test" if "model_source" not in purifier.manifest else f"{len(data.class_names)}-class"
    print(f"pyengine demo: {model_name(purifier.manifest)} from {checkpoint}\n"
          f"{len(data)} {what} images from {args.data}; attack: PGD-{args.attack_steps} L-inf "
          f"eps {args.eps:.4f} on the undefended classifier (static)\n"
          f"purification: {type(purifier.objective).__name__}, {purifier.extra_repr()}")
    result = run_demo(purifier, data, attack_eps=args.eps, attack_steps=args.attack_steps,
                      batch_size=args.batch_size, seed=args.seed)
    print(result.table())
    print(f"{result.n} images in {result.seconds:.1f} s")


def _cmd_eval(args) -> None:
    from ..attacks import expand_specs
    from ..demo import DEFAULT_CHECKPOINT
    from ..distributed import world
    from ..evaluation import EvalConfig, evaluate, markdown_table

    torch_threads(args)
    device(args)  # a device that cannot work is refused before anything loads
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    config = EvalConfig(attacks=expand_specs(args.attacks), eps=args.eps, norm=args.norm,
                        n=args.n, batch_size=args.batch_size, seed=args.seed, checkpoint=str(checkpoint))
    with world(args.device) as w:
        purifier = _purifier(args, checkpoint, w.device, attack_eps=args.eps, attack_norm=args.norm)
        data = eval_images(args, purifier, args.n)
        summary = evaluate(purifier, data, config, args.out, rank=w.rank, world_size=w.world_size,
                           figure_images=args.figures, manifest=purifier.manifest)
    if summary is None:
        return
    print(markdown_table(summary))
    print(f"report: {args.out / 'table.md'}, {args.out / 'results.json'}"
          + (f", figures in {args.out / 'figures'}" if args.figures else ""))


def _cmd_purify(args) -> None:
    from ..batch import purify_images
    from ..demo import DEFAULT_CHECKPOINT
    from ..distributed import world

    torch_threads(args)
    device(args)  # a device that cannot work is refused before anything loads
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    with world(args.device) as w:
        purifier = _purifier(args, checkpoint, w.device)
        summary = purify_images(purifier, args.input, args.out, batch_size=args.batch_size, seed=args.seed,
                                rank=w.rank, world_size=w.world_size, settings={"checkpoint": str(checkpoint)},
                                resize=args.resize)
    if summary is None:
        return
    accuracy = "" if summary["accuracy"] is None else f", accuracy {summary['accuracy']:.1%}"
    print(f"{summary['images']} images purified{accuracy}; mean L_s {summary['loss_before']:.4f} -> "
          f"{summary['loss_after']:.4f}\npredictions: {args.out / summary['predictions']}, "
          f"images in {args.out / summary['images_dir']}")


def register(sub) -> None:
    p = sub.add_parser("demo", help="attack, purify and compare on CIFAR-10 test images")
    add_default_checkpoint(p, "with CUDA, the GPU-trained PreAct-ResNet-18 FGSM-RS one where it is shipped "
                              "(pyengine.demo.GPU_CHECKPOINT); otherwise ")
    p.add_argument("--n", type=COUNT, default=100, help="number of test images")
    p.add_argument("--batch-size", type=BATCH, default=50)
    p.add_argument("--eps", type=RADIUS, default=8 / 255, help="attack radius (L-inf)")
    p.add_argument("--attack-steps", type=int_in(1, 10_000), default=10)
    add_purifier_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--threads", type=THREADS, default=None)
    add_data_args(p)
    add_user_model_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="static and adaptive attacks on the purified classifier: table, JSON, figures")
    add_default_checkpoint(p)
    p.add_argument("--attacks", default="pgd50,bpda-pgd50,transfer-pgd50",
                   help="comma-separated attack specs; 'adaptive' adds the adaptive suite "
                        "(grammar: pyengine.attacks.suite)")
    p.add_argument("--eps", type=NORM_RADIUS, default=8 / 255,
                   help="attack radius in --norm (L-inf at most 1, L2 at most 64; default 8/255); the contrastive "
                        "purifier reverses in the same norm at eps_v = 2 x eps unless --eps-v is given")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    # --num-images: torchrun's own parser takes a bare --n for an abbreviation of --nnodes.
    p.add_argument("--n", "--num-images", dest="n", type=COUNT, default=1000, help="number of test images")
    p.add_argument("--batch-size", type=BATCH, default=100)
    add_purifier_args(p)
    p.add_argument("--figures", type=int_in(0, 100_000), default=0, metavar="N",
                   help="also draw the papers' figures on the first N images (0: none)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=SEED, default=0)
    add_device_arg(p, "cuda under torchrun when present")
    p.add_argument("--threads", type=THREADS, default=None)
    add_data_args(p)
    add_user_model_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("purify", help="purify a folder or zip of images: purified PNGs and predictions.csv")
    p.add_argument("input", type=Path, help="folder or zip of *.png/*.jpg/*.jpeg at any depth; <class>/<file> "
                                            "with CIFAR-10 class names adds labels and accuracy")
    add_default_checkpoint(p)
    p.add_argument("--out", type=Path, required=True,
                   help="writes images/<path>.png, predictions.csv, summary.json; rerun to resume")
    p.add_argument("--batch-size", type=BATCH, default=100)
    add_purifier_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    add_device_arg(p, "cuda under torchrun when present")
    p.add_argument("--threads", type=THREADS, default=None)
    p.add_argument("--resize", action="store_true",
                   help="resize each image's shorter side to the model's size and crop the centre (default: "
                        "images of another size are refused)")
    p.add_argument("--weights", type=Path, default=None, help="a user model's weights file (see demo --help)")
    p.set_defaults(func=_cmd_purify)
