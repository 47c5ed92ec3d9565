"""``pyengine export ...``: ONNX export, TensorRT plans and the TensorRT compatibility check.

A thin layer over :mod:`pyengine.deploy`; hooked into the main parser by ``register``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..flags import check_output_file

CONTRASTIVE_STEPS = 10  # the export's default K for a contrastive checkpoint (SOAP's T is 5)


def _load_purifier(args):
    """The contrastive Purifier, or for a checkpoint with an ``aux_task`` SOAP's min-aux purifier
    (a fixed-radius one with ``--soap-eps``), from the factory every command uses."""
    from ..loading import load_purifier
    from ..models.checkpoint import read_manifest

    steps = args.steps
    if steps is None and not read_manifest(args.checkpoint).get("aux_task"):
        steps = CONTRASTIVE_STEPS
    return load_purifier(args.checkpoint, steps=steps, eps_v=args.eps_v, soap_eps=args.soap_eps)


def _cmd_onnx(args) -> int:
    from ..soap import MinAuxPurifier
    from .onnx_export import export_onnx, min_aux_radii, sidecar_path
    from .trt_compat import check_model

    check_output_file(args.out)
    purifier = _load_purifier(args)
    if isinstance(purifier, MinAuxPurifier) and args.one_step:
        raise ValueError("SOAP's min-aux selection has no one-step form (it compares every radius after T "
                         "steps): drop --one-step, or pass --soap-eps EPS for a fixed radius")
    size = tuple(args.image_size) if args.image_size else None
    path = export_onnx(purifier, args.out, purifier.steps, args.batch, opset=args.opset,
                       unrolled=not args.one_step, image_size=size)
    form = "one step (the runtime calls it K times)" if args.one_step else f"{purifier.steps} unrolled steps"
    if isinstance(purifier, MinAuxPurifier):
        form += f" for each of the radii {', '.join(f'{r * 255:g}/255' for r in min_aux_radii(purifier))}, min-aux"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {form}, batch {args.batch}, opset {args.opset}) "
          f"and {sidecar_path(path)}")
    if args.opset <= 17:
        report = check_model(path, "8.5")
        print(report.summary().splitlines()[0])
    return 0


def _cmd_tensorrt(args) -> int:
    from .tensorrt import build_engine

    check_output_file(args.out)
    plan = build_engine(args.onnx, args.out, fp16=args.fp16, workspace_gib=args.workspace_gib)
    print(f"wrote {plan} ({'fp16 classifier, fp32 purification' if args.fp16 else 'fp32'})")
    return 0


def _cmd_check(args) -> int:
    from .trt_compat import available_versions, check_model

    versions = available_versions() if args.trt == "all" else [args.trt]
    ok = True
    for version in versions:
        report = check_model(args.onnx, version)
        print(report.summary() if args.verbose or not report.ok else report.summary().splitlines()[0])
        ok &= report.ok
    return 0 if ok else 1


def register(subparsers) -> None:
    """Add ``export {onnx,tensorrt,check}`` to the main CLI's subparsers."""
    from ..flags import int_in, number_in

    export = subparsers.add_parser("export", help="export the defended classifier to ONNX / TensorRT")
    sub = export.add_subparsers(dest="export_command", required=True)

    p = sub.add_parser("onnx", help="purify (K steps with explicit gradients) + classify as one ONNX model")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int_in(1, 10_000), default=None,
                   help=f"K: purification steps (default: {CONTRASTIVE_STEPS}; SOAP checkpoints: T = 5)")
    p.add_argument("--batch", type=int_in(1, 4096), default=1, help="N, fixed in the graph (default: %(default)s)")
    p.add_argument("--opset", type=int_in(13, 18), default=17,
                   help="13..18; TensorRT 8.5/8.6 read up to 17 (default: %(default)s)")
    p.add_argument("--one-step", action="store_true", help="export one step that the runtime calls K times")
    p.add_argument("--image-size", type=int_in(1, 4096), nargs=2, metavar=("H", "W"), default=None,
                   help="default: the architecture's input size")
    p.add_argument("--eps-v", type=number_in(0, 1, open_low=True), default=None,
                   help="contrastive purification radius, step eps_v / 8 (default: the engine's 16/255)")
    p.add_argument("--soap-eps", type=number_in(0, 1, open_low=True), default=None,
                   help="SOAP checkpoints: purify at this fixed radius (needed for --one-step); default: "
                        "min-aux selection over radii e * 4/255, e = 0..10, in one unrolled graph")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)

    p = sub.add_parser("tensorrt", help="build a TensorRT plan from an exported ONNX model (needs TensorRT)")
    p.add_argument("--onnx", type=Path, required=True)
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 classifier; the purification stays fp32")
    precision.add_argument("--fp32", action="store_true", help="everything fp32 (default)")
    p.add_argument("--workspace-gib", type=number_in(0, 1024, open_low=True), default=2.0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)

    p = sub.add_parser("check", help="check an ONNX model against TensorRT's supported ONNX operators")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--trt", default="8.6", help="TensorRT version (8.5, 8.6, 10.3) or 'all' (default: %(default)s)")
    p.add_argument("--verbose", "-v", action="store_true", help="list ops and notes even when compatible")
    p.set_defaults(func=run)


def run(args) -> None:
    """Dispatch ``export`` subcommands under the CLI's error policy (:mod:`pyengine.errors`):
    a user error is one line and exit status 2; TensorRT missing is exit status 3."""
    from ..errors import USER_ERRORS, report
    from .tensorrt import TensorRTUnavailable

    command = f"export {args.export_command}"
    try:
        code = _DISPATCH[args.export_command](args)
    except TensorRTUnavailable as err:
        print(f"pyengine {command}: {err}", file=sys.stderr)
        code = 3
    except (*USER_ERRORS, NotImplementedError) as err:  # NotImplementedError: a form the export lacks
        code = report(command, err)
    if code:
        raise SystemExit(code)


_DISPATCH = {"onnx": _cmd_onnx, "tensorrt": _cmd_tensorrt, "check": _cmd_check}
