"""Does an fp16 export keep the fp32 step? Per-step sign agreement of the exported input gradient.

The L-inf step moves each pixel by -a * sign(g), g the input gradient of L_s, so an fp16
engine takes the fp32 step wherever its gradient has the fp32 sign. This module traces the
gradient of one step (the module the exported step uses, :func:`~.graph.build_modules`) in
fp32 and in fp16 at several loss scales, runs them on the same iterates and view draws
along the fp32 trajectory (so every step is compared on the same input) and counts, per
step, the pixels whose signs agree: over all pixels, and over the pixels the fp32 step
moves (g != 0; pixels outside every view have g = 0 in both). It also records the loss
scale's raison d'etre: the magnitudes of the fp32 backward pass inside the part that runs
in fp16 (:func:`backward_magnitudes`) and the scale they imply (:func:`choose_loss_scale`).

Backends. ``torch``: the traced graph run by torch's CPU kernels, every tensor stored in
fp16 as a GPU fp16 engine stores it: the measurement. ``onnxruntime``: the exported ONNX
graph (:func:`gradient_model`) on ONNX Runtime's CPU provider (graph optimisations off, so
the graph it runs is the exported one plus what it must insert). ONNX Runtime 1.32 does not
run it in fp16: it casts the fp16 weights and constants to fp32 ("precision-free" casts)
and computes in fp32 (48 casts to fp32 and 1 to fp16 where the export has 18 and 10), so
its figure is fp16 weights with fp32 arithmetic. The report counts the casts in the graph it ran.

    python3 -m pyengine.deploy.sign_agreement --n 64 --out docs/results/cpu/sign_agreement.json
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from ..data import ImageSet, load_cifar10
from ..hardware import cpu_description
from ..ops import contrastive_loss_reference, projection_step_reference
from ..provenance import provenance, utc_now
from ..purify import Purifier
from ..random import CounterRandom
from ..resume import write_atomic
from .graph import build_modules
from .onnx_export import _default_size, _to_onnx
from .precision import check_loss_scale
from .views import render_views

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14
FP16_MIN_SUBNORMAL = 2.0 ** -24
BACKENDS = ("torch", "onnxruntime")


@torch.enable_grad()
def backward_magnitudes(purifier: Purifier, x: torch.Tensor, view_params: torch.Tensor) -> dict:
    """|values| of the fp32 backward pass through the part an fp16 export runs in fp16: the
    gradients at every leaf module's output of the backbone and head, and at the views.

    -> ``max`` (what the loss scale must not push past fp16's 65504) and the fractions of
    the nonzero values that fp16 stores as subnormals (below 2^-14, fewer mantissa bits) or
    flushes to zero (below 2^-25), unscaled.
    """
    objective = purifier.objective
    seen: list[torch.Tensor] = []

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda g: seen.append(g.detach().abs().flatten()))

    leaves = [m for m in (*objective.classifier.modules(), *objective.head.modules()) if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        xr = x.detach().float().requires_grad_(True)
        views = render_views(xr, view_params, x.shape[-2], x.shape[-1])
        views.register_hook(lambda g: seen.append(g.detach().abs().flatten()))
        z = objective.embed(views).float()
        loss = contrastive_loss_reference(z, objective.views.n_views, objective.temperature, objective.bank)
        loss.sum().backward()
    finally:
        for h in handles:
            h.remove()
    values = torch.cat(seen)
    nonzero = values[values > 0]
    return {"max": values.max().item(), "values": values.numel(), "nonzero": nonzero.numel(),
            "fraction_subnormal": (nonzero < FP16_MIN_NORMAL).float().mean().item(),
            "fraction_flushed": (nonzero < FP16_MIN_SUBNORMAL / 2).float().mean().item()}


def choose_loss_scale(max_abs: float, headroom: float = 16.0) -> float:
    """The largest power of two S with ``max_abs * S * headroom <= 65504``: as far from
    underflow as the measured maximum allows, ``headroom`` x below overflow for images and
    iterates the measurement did not see."""
    if not max_abs > 0 or not headroom >= 1:
        raise ValueError(f"max_abs must be > 0 and headroom >= 1, got {max_abs} and {headroom}")
    return 2.0 ** max(0, math.floor(math.log2(FP16_MAX / (max_abs * headroom))))


def gradient_model(purifier: Purifier, batch: int, *, image_size: tuple[int, int] | None = None, opset: int = 17,
                   precision: str = "fp32", loss_scale: float | None = None) -> onnx.ModelProto:
    """The input gradient of one step as its own ONNX model, ``(x, *randoms) -> grad`` (float32
    [N, 3, H, W], the step's gradient times ``loss_scale``), traced from the module the step
    uses: for measuring the step's signs (this module)."""
    loss_scale = check_loss_scale(loss_scale, precision)
    h, w = image_size or _default_size(purifier)
    objective, step = build_modules(purifier, batch, h, w, precision=precision, loss_scale=loss_scale)
    randoms = objective.draw(batch, h, w, generator=torch.Generator().manual_seed(0))
    names = list(objective.random_inputs(batch, h, w))
    return _to_onnx(step.gradient, (torch.rand(batch, 3, h, w), *randoms), ["x", *names], ["grad"], opset)


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # module doc: backends
    with tempfile.TemporaryDirectory() as tmp:
        # The graph ONNX Runtime runs after its own rewrites: does it keep fp16 or cast to fp32?
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)

    def casts(m, to=None):
        return sum(n.op_type == "Cast" and (to is None or any(a.name == "to" and a.i == to for a in n.attribute))
                   for n in m.graph.node)

    return session, {"casts_exported": casts(model), "casts_run": casts(optimized),
                     "casts_to_fp16_run": casts(optimized, onnx.TensorProto.FLOAT16)}


def _gradient_runner(purifier: Purifier, backend: str, batch: int, size: tuple[int, int], precision: str,
                     scale: float, threads: int):
    """(feeds -> gradient as a numpy array, what ran) for one graph."""
    if backend == "torch":
        gradient = build_modules(purifier, batch, *size, precision=precision, loss_scale=scale)[1].gradient

        def run(x, views):
            with torch.no_grad():
                return gradient(torch.from_numpy(x), torch.from_numpy(views)).numpy()
        return run, {"backend": "torch CPU kernels on the traced graph"}
    session, info = _session(gradient_model(purifier, batch, image_size=size, precision=precision,
                                            loss_scale=scale), threads)
    return lambda x, views: session.run(["grad"], {"x": x, "view_params": views})[0], info


def measure(purifier: Purifier, data: ImageSet, *, steps: int | None = None, batch: int = 32,
            loss_scales=(1.0, 16.0, 256.0, 4096.0), backend: str = "torch", seed: int = 0, threads: int = 1,
            progress: bool = True) -> dict:
    """Per-step sign agreement, fp16 (at each of ``loss_scales``) vs fp32, on ``data``.

    The trajectory is the fp32 graph's: x_0 = the random start, x_{k+1} = the projected
    sign step with the fp32 gradient; every graph sees the same x_k and view draws. The
    fp32 graph at the largest loss scale is run too: its signs must equal scale 1's exactly.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if len(data) % batch:
        raise ValueError(f"the number of images ({len(data)}) must be a multiple of batch ({batch})")
    if purifier.step.norm != "linf":
        raise ValueError(f"sign agreement measures the L-inf step; this purifier's norm is {purifier.step.norm!r}")
    steps = purifier.steps if steps is None else steps
    started = utc_now()
    h, w = data.images.shape[-2:]
    variants = [("fp32", 1.0), ("fp32", max(loss_scales))] + [("fp16", float(s)) for s in loss_scales]
    runners, runtime = {}, {}
    for precision, scale in variants:
        runners[precision, scale], runtime[f"{precision}@{scale:g}"] = _gradient_runner(
            purifier, backend, batch, (h, w), precision, scale, threads)
    names = [f"{p}@{s:g}" for p, s in variants[1:]]
    agree = {name: np.zeros(steps) for name in names}
    agree_moving = {name: np.zeros(steps) for name in names}
    zeroed = {name: np.zeros(steps) for name in names}  # fp32 moves the pixel, this graph's gradient is 0
    pixels, moving = np.zeros(steps), np.zeros(steps)
    magnitudes = None
    step_rule = purifier.step
    for start in range(0, len(data), batch):
        index = torch.arange(start, start + batch)
        rng = CounterRandom(seed, index)
        x0 = data.images[index].float() / 255
        xk = step_rule.start(x0, generator=rng)
        for k in range(steps):
            views = purifier.objective.draw(xk, generator=rng)
            if magnitudes is None:
                magnitudes = backward_magnitudes(purifier, xk, views)
            grads = {name: runners[key](xk.numpy(), views.numpy()) for name, key in zip(["fp32@1", *names], variants)}
            reference = np.sign(grads["fp32@1"])
            nonzero = reference != 0
            pixels[k] += reference.size
            moving[k] += nonzero.sum()
            for name in names:
                same = np.sign(grads[name]) == reference
                agree[name][k] += same.sum()
                agree_moving[name][k] += (same & nonzero).sum()
                zeroed[name][k] += ((grads[name] == 0) & nonzero).sum()
            xk = projection_step_reference(xk, torch.from_numpy(grads["fp32@1"]), x0, step_rule.step_size,
                                           step_rule.eps, "linf")
        if progress:
            print(f"sign agreement: {start + batch}/{len(data)} images", flush=True)
    results = {}
    for name in names:
        results[name] = {
            "agreement": float(agree[name].sum() / pixels.sum()),
            "agreement_moving": float(agree_moving[name].sum() / moving.sum()),
            "zeroed_moving": float(zeroed[name].sum() / moving.sum()),
            "per_step_agreement_moving": (agree_moving[name] / moving).tolist(),
        }
    record = provenance(data=data, started=started, device=torch.device("cpu"))
    if backend == "onnxruntime":
        import onnxruntime as ort

        runtime = {"onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                   "graph_optimization": "disabled", "graphs": runtime}
    return {"n": len(data), "steps": steps, "batch": batch, "seed": seed, "loss_scales": list(loss_scales),
            "backend": backend, "torch": torch.__version__,
            "fraction_moving": float(moving.sum() / pixels.sum()),
            "backward_magnitudes_step1": magnitudes,
            "suggested_loss_scale": choose_loss_scale(magnitudes["max"]),
            "results": results, "runtime": runtime, "threads": threads,
            "cpu": cpu_description(), "provenance": record}


def main(argv: list[str] | None = None) -> dict:
    from ..demo import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(prog="python3 -m pyengine.deploy.sign_agreement", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 folder or zip")
    p.add_argument("--n", type=int, default=64, help="test images (a multiple of --batch)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="K (default: the purifier's, 40)")
    p.add_argument("--loss-scales", default="1,16,256,4096", help="fp16 loss scales, powers of two")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="what runs the graphs (module doc)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the raw JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    purifier = Purifier.from_checkpoint(args.checkpoint, precision="fp32", channels_last=False)
    data = load_cifar10(args.data, "test", limit=args.n)
    report = measure(purifier, data, steps=args.steps, batch=args.batch, threads=args.threads, backend=args.backend,
                     loss_scales=tuple(float(s) for s in args.loss_scales.split(",")))
    report["checkpoint"] = args.checkpoint.name
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, text)
    for name, r in report["results"].items():
        print(f"{name}: agreement {r['agreement']:.5f}, on moving pixels {r['agreement_moving']:.5f}, "
              f"zeroed {r['zeroed_moving']:.2e}")
    return report


if __name__ == "__main__":
    main()
