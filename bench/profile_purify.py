"""Where the GPU time of a purification goes, and what torch.compile adds.

    python bench/profile_purify.py --model preact_resnet18 --batch 512 --compile --out runs/profile.json

1. A torch.profiler trace of the engine's eager bf16 channels_last path (every kernel visible;
   the CUDA graph replays the same kernels), summed by kind of kernel: convolutions, batch
   norm and other elementwise work, the engine's fused ops, the rest.
2. With ``--compile``: ``Purifier(compile=True)`` (inductor fuses the BN/ReLU chains), with
   and without the captured loop, timed against the engine's default on the same batch.
   Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from pyengine import Purifier, create_model
from pyengine.models import ContrastiveHead, model_config
from pyengine.provenance import provenance, utc_now

KINDS = (  # first match wins: (kind, substrings of the kernel name, lower case)
    ("fused ops", ("sample_views", "lse_kernel", "grad_kernel", "normalize_kernel", "view_mean", "linf_", "l2_")),
    ("convolution", ("conv", "cudnn", "xmma", "sm90", "gemm", "cutlass", "implicit")),
    ("batch norm", ("batch_norm", "bn_")),
    ("triton (compiled)", ("triton",)),
    ("elementwise and copies", ("elementwise", "vectorized", "copy", "fill", "reduce", "where", "clamp")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(k in lowered for k in keys)), "other")


def build(model: str, steps: int, **settings) -> Purifier:
    torch.manual_seed(0)
    cfg = model_config(model)
    classifier = create_model(model).cuda().eval()
    head = ContrastiveHead(cfg.num_features, cfg.head_hidden, cfg.head_out).cuda().eval()
    return Purifier(classifier, head, steps=steps, bank=torch.randn(2048, cfg.head_out, device="cuda"), **settings)


def seconds_per_call(purifier: Purifier, x: torch.Tensor, reps: int = 2) -> float:
    if purifier.compile:
        purifier.warmup([x.shape[0]], image_size=tuple(x.shape[-2:]))  # compiles only warmed-up sizes
    purifier.purify(x)  # warm-up: cuDNN autotuning, graph capture
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        purifier.purify(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def kernel_breakdown(purifier: Purifier, x: torch.Tensor) -> dict:
    purifier.purify(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        purifier.purify(x)
        torch.cuda.synchronize()
    by_kind, top = defaultdict(float), []
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if device_us <= 0 or event.key.startswith(("ProfilerStep", "aten::", "autograd::", "pyengine::")):
            continue
        by_kind[kind_of(event.key)] += device_us
        top.append((device_us, event.count, event.key[:120]))
    total = sum(by_kind.values())
    return {"total_ms": total / 1e3, "share": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"ms": us / 1e3, "calls": n, "name": name} for us, n, name in sorted(top, reverse=True)[:15]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="preact_resnet18")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile-steps", type=int, default=4, help="steps in the profiled call")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile experiment")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = utc_now()
    x = torch.rand(args.batch, 3, 32, 32, device="cuda")
    report = {"device": torch.cuda.get_device_name(), "model": args.model, "batch": args.batch, "steps": args.steps,
              "seconds": {}, "images_per_second": {}}

    def record(name: str, purifier: Purifier) -> None:
        try:
            seconds = seconds_per_call(purifier, x)
            report["seconds"][name], report["images_per_second"][name] = seconds, args.batch / seconds
        except Exception as err:  # an experiment: record why it failed and go on
            report["seconds"][name] = f"failed: {type(err).__name__}: {str(err)[:300]}"
        report["provenance"] = provenance(started=started, device=x.device)
        save(report, args.out)  # after every measurement: a stage cut short keeps what it has

    report["breakdown"] = kernel_breakdown(build(args.model, args.profile_steps, cuda_graph=False), x)
    record("engine default", build(args.model, args.steps))
    if args.compile:
        for name, graph in (("compiled backbone, CUDA graph", True), ("compiled backbone, eager loop", False)):
            record(name, build(args.model, args.steps, cuda_graph=graph, compile=True))
    print(json.dumps(report, indent=2))


def save(report: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)

if __name__ == "__main__":
    main()
