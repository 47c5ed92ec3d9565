"""``pyengine export onnx|tensorrt|check``: ONNX export, TensorRT plans and the TensorRT
compatibility check, a thin layer over :mod:`pyengine.deploy`.

``export onnx`` builds its purifier with :func:`pyengine.load_purifier` and its defaults
(K = 40 contrastive, T = 5 SOAP). Without TensorRT, ``export tensorrt`` prints what to
install and exits with status 3 (:data:`MISSING_DEPENDENCY_EXIT`).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError, report
from .flags import RADIUS, check_output_file, int_in, number_in

MISSING_DEPENDENCY_EXIT = 3


def _cmd_onnx(args) -> None:
    from ..deploy.onnx_export import export_onnx, min_aux_radii, sidecar_path
    from ..deploy.trt_compat import check_model
    from ..loading import load_purifier
    from ..soap import MinAuxPurifier

    check_output_file(args.out)
    purifier = load_purifier(args.checkpoint, steps=args.steps, eps_v=args.eps_v, soap_eps=args.soap_eps)
    min_aux = isinstance(purifier, MinAuxPurifier)
    if min_aux and args.one_step:
        raise UsageError("SOAP's min-aux selection has no one-step form (it compares every radius after T "
                         "steps): drop --one-step, or pass --soap-eps EPS for a fixed radius")
    size = tuple(args.image_size) if args.image_size else None
    try:
        path = export_onnx(purifier, args.out, purifier.steps, args.batch, opset=args.opset,
                           unrolled=not args.one_step, image_size=size)
    except NotImplementedError as err:  # a purifier the exporter has no form for: the user chose it
        raise UsageError(f"cannot export this purifier: {err}") from err
    form = "one step (the runtime calls it K times)" if args.one_step else f"{purifier.steps} unrolled steps"
    if min_aux:
        form += f" for each of the radii {', '.join(f'{r * 255:g}/255' for r in min_aux_radii(purifier))}, min-aux"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {form}, batch {args.batch}, opset {args.opset}) "
          f"and {sidecar_path(path)}")
    if args.opset <= 17:
        print(check_model(path, "8.5").summary().splitlines()[0])


def _cmd_tensorrt(args) -> int:
    from ..deploy.tensorrt import TensorRTUnavailable, build_engine

    check_output_file(args.out)
    try:
        plan = build_engine(args.onnx, args.out, fp16=args.fp16, workspace_gib=args.workspace_gib)
    except TensorRTUnavailable as err:  # not the user's input: an optional dependency, its own status
        report("export tensorrt", err)
        return MISSING_DEPENDENCY_EXIT
    print(f"wrote {plan} ({'fp16 classifier, fp32 purification' if args.fp16 else 'fp32'})")
    return 0


def _cmd_check(args) -> int:
    from ..deploy.trt_compat import available_versions, check_model

    versions = available_versions() if args.trt == "all" else [args.trt]
    ok = True
    for version in versions:
        result = check_model(args.onnx, version)
        print(result.summary() if args.verbose or not result.ok else result.summary().splitlines()[0])
        ok &= result.ok
    return 0 if ok else 1


def register(sub) -> None:
    export = sub.add_parser("export", help="export the defended classifier to ONNX / TensorRT")
    commands = export.add_subparsers(dest="export_command", required=True)

    p = commands.add_parser("onnx", help="purify (K steps with explicit gradients) + classify as one ONNX model")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int_in(1, 10_000), default=None,
                   help="K: purification steps (default: the engine's, K = 40; SOAP checkpoints: T = 5)")
    p.add_argument("--batch", type=int_in(1, 4096), default=1, help="N, fixed in the graph (default: %(default)s)")
    p.add_argument("--opset", type=int_in(13, 18), default=17,
                   help="13..18; TensorRT 8.5/8.6 read up to 17 (default: %(default)s)")
    p.add_argument("--one-step", action="store_true", help="export one step that the runtime calls K times")
    p.add_argument("--image-size", type=int_in(1, 4096), nargs=2, metavar=("H", "W"), default=None,
                   help="default: the architecture's input size")
    p.add_argument("--eps-v", type=RADIUS, default=None,
                   help="contrastive purification radius, step eps_v / 8 (default: the engine's 16/255)")
    p.add_argument("--soap-eps", type=RADIUS, default=None,
                   help="SOAP checkpoints: purify at this fixed radius (needed for --one-step); default: "
                        "min-aux selection over radii e * 4/255, e = 0..10, in one unrolled graph")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_onnx)

    p = commands.add_parser("tensorrt", help="build a TensorRT plan from an exported ONNX model (needs TensorRT)")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--fp16", action="store_true", help="fp16 classifier; the purification stays fp32 (default: "
                                                       "everything fp32)")
    p.add_argument("--workspace-gib", type=number_in(0, 1024, open_low=True), default=2.0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_tensorrt)

    p = commands.add_parser("check", help="check an ONNX model against TensorRT's supported ONNX operators")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--trt", default="8.6", help="TensorRT version (8.5, 8.6, 10.3) or 'all' (default: %(default)s)")
    p.add_argument("--verbose", "-v", action="store_true", help="list ops and notes even when compatible")
    p.set_defaults(func=_cmd_check)
