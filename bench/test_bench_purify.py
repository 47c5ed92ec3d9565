"""Purification latency and throughput: the engine's default path vs the published loop.

    python -m pytest bench/test_bench_purify.py --benchmark-only --benchmark-json runs/bench_purify.json
    python -m pyengine bench runs/bench_purify.json        # the side-by-side table

Settings from the environment: PYENGINE_BENCH_MODEL (default preact_resnet_tiny),
PYENGINE_BENCH_STEPS (K; default 40 on CUDA, 10 on the CPU), PYENGINE_BENCH_BATCHES
(default 1,32,128,512 on CUDA, 1,32 on the CPU), PYENGINE_BENCH_VARIANTS (an ablation of
the engine's levers, named as :func:`pyengine.bench_table.parse_variant` reads them, e.g.
``pyengine.bench_table.CPU_ABLATION``; ``compile`` variants are warmed up for the batch size
before timing and record the warm-up's seconds; default none), PYENGINE_BENCH_EARLY_EXIT
(TOLERANCE,WINDOW of the ``exit`` variants; default 0.01,3). The default engine row is
``Purifier``'s defaults. Random weights: speed does not depend on them, except with early
exit, whose steps per image (recorded as ``mean_steps``) depend on weights and images; its
effect on real images is measured by ``pyengine parity --early-exit``. On CUDA each result also records the
peak GPU memory of the call. FLOPs are counted with torch.utils.flop_counter on one engine step
(forward and input-gradient backward of all views); both paths are credited with the
same useful FLOPs, so the published loop's weight gradients count as waste. Each result
records the device (a CPU with its ISA flags and threads) and the provenance record of
:mod:`pyengine.provenance` (commit, versions, times), which ``pyengine bench`` tabulates.
"""
import os
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from published_loop import published_purify
from pyengine import EarlyExit, Purifier, create_model
from pyengine.bench_table import parse_variant
from pyengine.models import ContrastiveHead, model_config
from pyengine.provenance import device_name, provenance, utc_now

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = os.environ.get("PYENGINE_BENCH_MODEL", "preact_resnet_tiny")
STEPS = int(os.environ.get("PYENGINE_BENCH_STEPS", 40 if DEVICE == "cuda" else 10))
BATCHES = [int(b) for b in os.environ.get("PYENGINE_BENCH_BATCHES",
                                          "1,32,128,512" if DEVICE == "cuda" else "1,32").split(",")]
VARIANTS = [v for v in os.environ.get("PYENGINE_BENCH_VARIANTS", "").split(",") if v]
EARLY_EXIT = EarlyExit(*(f(v) for f, v in zip((float, int), os.environ.get("PYENGINE_BENCH_EARLY_EXIT",
                                                                                  "0.01,3").split(","))))


@pytest.fixture
def models():
    # Fresh per test: the engine converts its classifier to channels_last on CUDA, and the
    # published loop must get the model as a user hands it over (NCHW, fp32).
    torch.manual_seed(0)
    cfg = model_config(MODEL)
    classifier = create_model(MODEL).to(DEVICE).eval()
    head = ContrastiveHead(cfg.num_features, cfg.head_hidden, cfg.head_out).to(DEVICE).eval()
    bank = torch.randn(2048, cfg.head_out, device=DEVICE)
    return classifier, head, bank


def step_flops(purifier, x):
    """FLOPs of one purification step (all views, forward + input gradient) for batch x."""
    xk = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        # backward(), not autograd.grad: FlopCounterMode's hooks refuse the latter.
        purifier.objective(xk, generator=torch.Generator().manual_seed(0)).sum().backward()
    return counter.get_total_flops()


def record(benchmark, path, batch, flops_per_image):
    benchmark.group = f"purify {MODEL} K={STEPS} batch {batch}"
    benchmark.extra_info.update(path=path, model=MODEL, steps=STEPS, batch=batch, device=device_name(DEVICE),
                                threads=torch.get_num_threads(), flops_per_image=flops_per_image)


def timed(fn):
    def run():
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def run_rounds(benchmark, fn, batch):
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = utc_now()
    benchmark.pedantic(timed(fn), rounds=3 if batch < 128 else 1, warmup_rounds=1)
    if DEVICE == "cuda":
        benchmark.extra_info["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    benchmark.extra_info["provenance"] = provenance(started=started, device=DEVICE)


def bench_engine(benchmark, models, batch, path, **settings):
    classifier, head, bank = models
    purifier = Purifier(classifier, head, steps=STEPS, bank=bank, image_size=(32, 32), **settings)
    x = torch.rand(batch, 3, 32, 32, device=DEVICE)
    flops = step_flops(purifier, x) * STEPS / batch
    record(benchmark, path, batch, flops)
    benchmark.extra_info["purifier"] = purifier.extra_repr()  # what "auto" resolved to on this machine
    if purifier.compile:
        started = time.perf_counter()
        purifier.warmup([batch])  # compilation paid once, ahead of serving
        benchmark.extra_info["warmup_seconds"] = time.perf_counter() - started
    gen = torch.Generator().manual_seed(1)
    run_rounds(benchmark, lambda: purifier.purify(x, generator=gen), batch)
    if purifier.early_exit is not None:
        taken = purifier.purify(x, generator=torch.Generator().manual_seed(1), return_trace=True).steps_taken
        benchmark.extra_info["mean_steps"] = taken.float().mean().item()


@pytest.mark.parametrize("batch", BATCHES)
def test_engine(benchmark, models, batch):
    bench_engine(benchmark, models, batch, "engine")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_engine_variant(benchmark, models, batch, variant):
    bench_engine(benchmark, models, batch, f"variant:{variant}", **parse_variant(variant, early_exit=EARLY_EXIT))


@pytest.mark.parametrize("batch", BATCHES)
def test_published_loop(benchmark, models, batch):
    classifier, head, bank = models
    x = torch.rand(batch, 3, 32, 32, device=DEVICE)
    flops = step_flops(Purifier(classifier, head, steps=STEPS, bank=bank), x) * STEPS / batch
    record(benchmark, "published", batch, flops)
    gen = torch.Generator().manual_seed(1)
    run_rounds(benchmark, lambda: published_purify(classifier, head, x, steps=STEPS, generator=gen), batch)
