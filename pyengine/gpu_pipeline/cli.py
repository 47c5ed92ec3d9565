"""``python -m pyengine.gpu_pipeline run|carry``: the papers' settings trained, attacked and
published on one GPU in short slots; ``SMOKE=1`` (or ``--smoke``) runs every step on a CPU.

    python3 -m pyengine.gpu_pipeline carry --out gpu_data/cifar10      # here: the data a device call carries
    DEADLINE_S=540 python3 -m pyengine.gpu_pipeline run --data gpu_data/cifar10   # there
    SMOKE=1 python3 -m pyengine.gpu_pipeline run                       # anywhere: the whole pipeline, tiny
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
import zipfile
from pathlib import Path

from .plan import SCALES, SETTINGS, STAGES, Layout, device_slug
from ..resume import write_atomic
from .runner import RESERVE_S, exit_code, schedule

MADE_BY = "python3 -m pyengine.gpu_pipeline run"


def _list(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list of {', '.join(allowed)}; "
                                         f"got {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    from ..cli import Parser
    from ..cli.flags import number_in

    parser = Parser(prog="python3 -m pyengine.gpu_pipeline", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or continue) the papers' GPU pipeline")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of the JPEG copy's train.zip and test.zip (default: env DATA, else PYENGINE_DATA, "
                        "else ../shared/data/cifar10 beside the checkout)")
    p.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE") == "1",
                   help="every step on the tiny model and a few images (env SMOKE=1)")
    p.add_argument("--work", type=Path, default=None,
                   help="the run's own files: data cache, fp32 checkpoints, resume states (default: "
                        "runs/gpu_papers, runs/gpu_papers_smoke)")
    p.add_argument("--root", type=Path, default=None,
                   help="where checkpoints and results are published, by their repository paths "
                        "(default: . ; with --smoke: WORK/publish)")
    p.add_argument("--deadline", type=number_in(0, 10**7, open_low=True),
                   default=os.environ.get("DEADLINE_S") or None,
                   help="seconds from the start after which nothing runs (env DEADLINE_S)")
    p.add_argument("--stages", type=lambda t: _list(t, STAGES, "--stages"), default=list(STAGES))
    p.add_argument("--settings", type=lambda t: _list(t, SETTINGS, "--settings"), default=list(SETTINGS))
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--compile", action="store_true", help="train with torch.compile (pays only for long runs)")
    p.add_argument("--plan-only", action="store_true", help="measure, print the estimates, run nothing")
    p = sub.add_parser("carry", help="write the data folder a GPU call carries (train.zip and a test prefix)")
    p.add_argument("--data", type=Path, default=None, help="as for run")
    p.add_argument("--out", type=Path, default=Path("gpu_data/cifar10"))
    p.add_argument("--also", type=Path, nargs="*", default=[Path(".whl")],
                   help="other carried folders, counted against the limit (default: .whl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..data import DataError
    from ..models.checkpoint import CheckpointError
    from ..resources import cifar10_path

    args = build_parser().parse_args(argv)
    try:
        args.data = cifar10_path(args.data or os.environ.get("DATA") or None)
        if args.command == "carry":
            from .carry import prepare

            prepare(args.data, args.out, also=tuple(p for p in args.also if p.exists()))
            return 0
        return run(args, argv if argv is not None else sys.argv[1:])
    except (DataError, CheckpointError) as err:
        print(f"pyengine.gpu_pipeline: error: {err}", file=sys.stderr)
        return 2


def run(args, argv: list[str]) -> int:
    import torch

    from ..data_cache import cache_path, source_digest
    from .steps import build_steps, published_paths, summary_rows

    start = time.monotonic()
    deadline = None if args.deadline is None else start + args.deadline - RESERVE_S
    scale = SCALES["smoke" if args.smoke else "gpu"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke and args.device is None:
        print("pyengine.gpu_pipeline: error: no CUDA device; the GPU scale takes hours there. Use --smoke (SMOKE=1) "
              "to check the pipeline, or --device cpu to run it anyway", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    work = args.work or Path("runs/gpu_papers_smoke" if args.smoke else "runs/gpu_papers")
    layout = Layout(work, args.root or (work / "publish" if args.smoke else Path(".")),
                    device_slug(name) if device.type == "cuda" else "cpu")
    cache = cache_path(layout.cache_dir(), source_digest(args.data))
    command = f"{'SMOKE=1 ' if args.smoke else ''}{MADE_BY} {shlex.join(argv[1:] if argv[:1] == ['run'] else argv)}"
    steps = build_steps(scale, layout, args.settings, device=device.type, source=args.data, cache=cache,
                        counts=_counts(args.data, cache), compile=args.compile, command=command.strip())
    print(f"pyengine.gpu_pipeline: {scale.name} scale on {name}; work in {layout.work}, publishing to "
          f"{layout.root}; deadline {'none' if args.deadline is None else f'{args.deadline:.0f} s'}", flush=True)
    todo = [s for s in steps if s.stage in args.stages and not s.done()]
    if importlib.util.find_spec("torchattacks") is None and any(
            word in " ".join(s.argv or []) for s in todo for word in ("autoattack", "apgd", "adaptive")):
        print("warning: torchattacks is not installed, so the AutoAttack and APGD steps will fail; install it "
              "(README, 'GPU runs': the wheel in .whl)", flush=True)
    to_train = [n for n in args.settings if any(s.name in (f"train {n}", f"head {n}") for s in todo)]
    rates = _rates(scale, args.settings, to_train, device, layout.work, args.data, name, args.compile) if todo else {}
    budget = None if deadline is None else deadline - time.monotonic()
    if todo:
        print("\n".join(["", "Estimated from the throughput measured here:", *summary_rows(todo, rates, budget), ""]),
              flush=True)
    if args.plan_only:
        return 0
    status = schedule(steps, rates, deadline=deadline, skip=lambda s: s.stage not in args.stages)
    if "publish" in args.stages:
        _tables(layout, name)
    tables = layout.results() / "RESULTS.md"
    paths = [str(p.relative_to(layout.root)) if p.is_relative_to(layout.root) else str(p)
             for p in published_paths(steps) + ([tables] if tables.is_file() else [])]
    layout.work.mkdir(parents=True, exist_ok=True)
    write_atomic(layout.work / "published.txt", "".join(f"{line}\n" for line in paths))
    print(f"\n{len(paths)} published paths listed in {layout.work / 'published.txt'} (relative to {layout.root})")
    left = {k: v for k, v in status.items() if v not in ("done", "ran")}
    print("left: " + (", ".join(f"{k} ({v})" for k, v in left.items()) if left else "nothing") +
          f"; {time.monotonic() - start:.0f} s in all", flush=True)
    return exit_code(status)


def _counts(source: Path, cache: Path) -> dict[str, int]:
    """Images per split, from the cache when it exists, else from the zips' member lists."""
    from ..data import IMAGE_SUFFIXES
    from ..data_cache import load_cache

    if cache.is_file():
        return {split: len(load_cache(cache, split)) for split in ("train", "test")}
    counts = {}
    for split in ("train", "test"):
        with zipfile.ZipFile(source / f"{split}.zip") as zf:
            counts[split] = sum(m.lower().endswith(IMAGE_SUFFIXES) for m in zf.namelist())
    return counts


def _rates(scale, settings, to_train, device, work: Path, data: Path, name: str, compile: bool) -> dict:
    """Measured throughput, reused from ``work/throughput.json`` when it was measured on the
    same device, torch and plan, training included where ``to_train`` needs it (a fresh
    machine measures again: seconds)."""
    import torch

    from .costs import NOMINAL_H200, measure
    from ..provenance import provenance

    key = {"device": name, "torch": torch.__version__, "scale": scale.name, "settings": sorted(settings),
           "recipes": scale.recipes, "head": scale.head, "compile": compile}
    path = work / "throughput.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key and set(to_train) <= set(saved.get("train", ())):
            print(f"throughput measured before on this machine: {path}")
            return saved["rates"]
    try:
        rates = measure(scale, settings, device, train=to_train, data=data)
    except (RuntimeError, ValueError, OSError) as err:  # an estimate must not stop the run it estimates
        print(f"warning: the throughput measurement failed ({type(err).__name__}: {err}); the estimates use "
              "nominal H200 rates", flush=True)
        return dict(NOMINAL_H200)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"key": key, "train": sorted(to_train), "rates": rates,
                                   "provenance": provenance()}, indent=2))
    return rates


def _tables(layout: Layout, device_name: str) -> None:
    """``pyengine results``' tables of whatever evaluations exist, beside their raw outputs."""
    from ..evaluation.paper import results_markdown

    root = layout.results()
    if any(root.glob("*/results.json")):
        # The pipeline runs SOAP's own attacks in the static run and no Table 5 run: only its runs.
        text = results_markdown(root, device_name, made_by=MADE_BY, settings=list(SETTINGS),
                                suffixes=("", "_adaptive"))
        (root / "RESULTS.md").write_text(text + "\n")
        print(f"tables: {root / 'RESULTS.md'}")
