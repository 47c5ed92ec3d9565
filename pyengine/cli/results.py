"""``pyengine bench``, ``pyengine parity`` and ``pyengine results``: tables from runs, and the
fast path checked against the reference path."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..provenance import relative_path
from .common import PURIFIER_PRECISIONS, add_data_args, add_default_checkpoint, add_device_arg, device, torch_threads
from .flags import BATCH, COUNT, RADIUS, SEED, THREADS, check_output_file, number_in


def _cmd_bench(args) -> None:
    from ..bench_table import load_rows, markdown

    try:
        table = markdown(load_rows(*args.json), args.peak_tflops)
    except (OSError, ValueError, KeyError) as err:  # KeyError: a JSON file that is not pytest-benchmark's
        raise UsageError(f"cannot read {', '.join(map(str, args.json))}: {err}") from err
    print(table)


def _cmd_parity(args) -> int:
    import json

    from ..data import load_cifar10
    from ..demo import DEFAULT_CHECKPOINT
    from ..evaluation.parity import check_parity, load_paths, markdown

    torch_threads(args)
    if args.out:
        check_output_file(args.out)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    reference, fast = load_paths(checkpoint, device(args), precision=args.precision, compile=args.compile)
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
    return 0 if report["passed"] else 1


def _cmd_results(args) -> None:
    from ..evaluation.paper import results_markdown

    if args.out:
        check_output_file(args.out)
    text = results_markdown(args.runs, args.device_name)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)


def register(sub) -> None:
    p = sub.add_parser("bench", help="table of engine vs published-loop purification speed from a benchmark JSON")
    p.add_argument("json", type=Path, nargs="+", help="written by: python -m pytest bench/test_bench_purify.py "
                                                      "--benchmark-only --benchmark-json FILE")
    p.add_argument("--peak-tflops", type=number_in(0, 1e9, open_low=True), default=None,
                   help="the device's peak, for the roofline fraction")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("parity", help="robust-accuracy gain of the fast path (bf16, CUDA graph) vs the fp32 "
                                      "reference path; exit status 1 when it differs by more than the tolerance")
    add_default_checkpoint(p, "contrastive checkpoint; ")
    add_data_args(p)
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
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--threads", type=THREADS, default=None)
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("results", help="docs/RESULTS.md: our evaluation runs beside the papers' numbers")
    p.add_argument("runs", type=Path, help="root holding <setting>/results.json (scripts/reproduce_papers.sh)")
    p.add_argument("--device-name", default="an unnamed machine", help="the machine the runs used, for the text")
    p.add_argument("--out", type=Path, default=None, help="write here instead of printing")
    p.set_defaults(func=_cmd_results)
