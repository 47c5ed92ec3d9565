"""Build a TensorRT plan from an exported purifier, on the device that will run it.

Plans are specific to the GPU and the TensorRT version: build on the Jetson itself. Needs
TensorRT's Python package (JetPack: ``sudo apt-get install python3-libnvinfer``); no torch.
With ``--fp16`` only the classifier (ONNX nodes ``classify/...``) may run in fp16: every
layer of the purification steps is pinned to fp32, as the input gradients (~1e-6) underflow
in fp16. The builder is pyengine's ``deploy/tensorrt.py`` (``kit.load("tensorrt")``).

    python3 build_plan.py model.onnx model.plan [--fp16] [--workspace-gib 2] [--verbose]

Without the Python package, ``trtexec`` builds an fp32 plan:
``/usr/src/tensorrt/bin/trtexec --onnx=model.onnx --saveEngine=model.plan``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kit import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, help="the exported .onnx")
    parser.add_argument("plan", type=Path, help="the plan file to write")
    parser.add_argument("--fp16", action="store_true", help="fp16 classifier; the purification stays fp32")
    parser.add_argument("--workspace-gib", type=float, default=2.0, help="builder workspace (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    args = parser.parse_args(argv)
    if not args.workspace_gib > 0:
        parser.error(f"--workspace-gib must be > 0, got {args.workspace_gib}")
    tensorrt = load("tensorrt")
    try:
        plan = tensorrt.build_engine(args.onnx, args.plan, fp16=args.fp16, workspace_gib=args.workspace_gib,
                                     verbose=args.verbose)
    except tensorrt.TensorRTUnavailable as err:
        print(f"build_plan: {err}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as err:
        print(f"build_plan: {err}", file=sys.stderr)
        return 2
    print(f"build_plan: wrote {plan} ({'fp16 classifier, fp32 purification' if args.fp16 else 'fp32'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
