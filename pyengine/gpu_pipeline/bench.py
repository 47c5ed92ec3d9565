"""The ``bench`` stage: issue 17's ablation on the GPU models and the parity of the fast path.

Three steps, about 4 minutes on an H200 together (each under its own limit; a slot for the
stage alone: ``--stages data,bench``): ``bench/test_bench_purify.py`` with the ablation of
the engine's levers on PreAct-ResNet-18 (batch 1 and 512) and on WRN-28-10 (batch 128), the
issue's three targets, and ``pyengine parity`` of the default fast path against the fp32
reference path. Their raw JSON goes to ``docs/results/<gpu>/bench/``;
``python -m pyengine bench docs/results/<gpu>/bench/bench_*.json`` tabulates them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .plan import Layout, Step

BENCH_FILE = Path(__file__).resolve().parents[2] / "bench" / "test_bench_purify.py"  # in the repository


@dataclass(frozen=True)
class BenchRun:
    model: str
    batches: str  # PYENGINE_BENCH_BATCHES
    variants: str  # PYENGINE_BENCH_VARIANTS
    seconds: float  # the estimate (an H200 for the GPU scale)


# The lever-by-lever ablation on a GPU: precision, layout, the captured loop, folding, then
# compiling (warmed up); early exit runs eagerly only. WRN-28-10 at its target batch only.
GPU_BENCH = (
    BenchRun("preact_resnet18", "1,512", "fp32-eager,bf16-eager,bf16-nhwc-graph,bf16-nhwc-fold-graph,"
             "bf16-nhwc-fold-exit-eager,bf16-nhwc-fold-graph-compile", 110.0),
    BenchRun("wide_resnet28_10", "128", "bf16-nhwc-graph,bf16-nhwc-fold-graph,bf16-nhwc-fold-graph-compile", 80.0),
)
SMOKE_BENCH = (BenchRun("preact_resnet_tiny", "2", "fp32-eager,bf16-nhwc-fold-exit-eager", 30.0),)


def bench_steps(layout: Layout, *, smoke: bool, device: str, cache: Path, n_test: int) -> list[Step]:
    """The stage's steps; each is done when its JSON is published."""
    from ..demo import STANDARD_CHECKPOINT

    out = layout.root / "docs" / "results" / layout.device_slug / "bench"
    steps = []
    for run in SMOKE_BENCH if smoke else GPU_BENCH:
        result = out / f"bench_{run.model}.json"
        env = {"PYENGINE_BENCH_MODEL": run.model, "PYENGINE_BENCH_BATCHES": run.batches,
               "PYENGINE_BENCH_VARIANTS": run.variants, "PYENGINE_BENCH_STEPS": "2" if smoke else "40"}
        argv = [str(BENCH_FILE), "-q", "-p", "no:cacheprovider", "--benchmark-only", f"--benchmark-json={result}"]
        steps.append(Step(f"bench {run.model}", "bench", result.is_file, lambda r, s=run.seconds: (s, None),
                          argv=argv, module="pytest", env=env, outputs=(result,),
                          before=lambda d=result.parent: d.mkdir(parents=True, exist_ok=True)))
    n, batch = (8, 4) if smoke else (min(n_test, 10000), 1000)
    parity = out / "parity.json"
    argv = ["parity", "--checkpoint", str(STANDARD_CHECKPOINT), "--data", str(cache), "--n", str(n),
            "--batch-size", str(batch), "--device", device, "--robust-only", "--out", str(parity)]
    argv += ["--tolerance", "100"] if smoke else []  # 8 images: one image is 12.5 points; the smoke checks the plumbing
    steps.append(Step("bench parity", "bench", parity.is_file, lambda r: (45.0 if not smoke else 20.0, None),
                      argv=argv, outputs=(parity,)))
    return steps
