"""Run an exported purifier with numpy and ONNX Runtime (no torch needed).

``OnnxPurifier(path)`` reads the model and its JSON sidecar, draws the randomness on the
host (the graph has none: TensorRT ignores RandomUniform seeds), runs purify + classify
and returns logits and purified images. The sampler reproduces the distributions of
:meth:`pyengine.purify.ViewSampler.draw` and of the step rule's random start, not the
torch random streams; pass explicit draws (``start_noise``, ``randoms``) to reproduce a
particular engine run. This module imports only numpy and onnxruntime: the edge kit
(``export/kit.py``) runs it from its file on devices without torch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

VIEW_PARAM_COLUMNS = ["crop_top", "crop_left", "crop_height", "crop_width", "flip", "brightness",
                      "contrast", "saturation", "hue", "grayscale"]


class OnnxPurifyResult(NamedTuple):
    logits: np.ndarray  # float32 [N, C]
    images: np.ndarray  # float32 [N, 3, H, W] in [0, 1]: the purified input


def draw_view_params(rng: np.random.Generator, n_images: int, height: int, width: int, sampler: dict) -> np.ndarray:
    """float32 [V*N, 10] view parameters, distributed as ``ViewSampler.draw`` with settings ``sampler``."""
    shared = sampler.get("shared_across_batch", False)
    rows = sampler["n_views"] * (1 if shared else n_images)
    params = np.zeros((rows, len(VIEW_PARAM_COLUMNS)), np.float32)
    params[:, 5:8] = 1.0  # brightness, contrast, saturation factors of an unjittered view
    # RandomResizedCrop: ten tries of (area, log-ratio); the first that fits, else the full image.
    tries = 10
    area = rng.uniform(*sampler["scale"], size=(rows, tries))
    log_ratio = rng.uniform(math.log(sampler["ratio"][0]), math.log(sampler["ratio"][1]), size=(rows, tries))
    aspect = np.exp(log_ratio) * height / width
    crop_w, crop_h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    fits = (crop_w <= 1) & (crop_h <= 1)
    first = np.where(fits.any(1), fits.argmax(1), -1)
    pick = np.clip(first, 0, None)[:, None]
    crop_h = np.where(first >= 0, np.take_along_axis(crop_h, pick, 1)[:, 0], 1.0)
    crop_w = np.where(first >= 0, np.take_along_axis(crop_w, pick, 1)[:, 0], 1.0)
    params[:, 0] = rng.random(rows) * (1 - crop_h)
    params[:, 1] = rng.random(rows) * (1 - crop_w)
    params[:, 2], params[:, 3] = crop_h, crop_w
    params[:, 4] = rng.random(rows) < sampler["flip_p"]
    jitter = rng.random(rows) < sampler["jitter_p"]
    for column, key in ((5, "brightness"), (6, "contrast"), (7, "saturation")):
        strength = sampler[key]
        factor = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=rows)
        params[:, column] = np.where(jitter, factor, 1.0)
    params[:, 8] = np.where(jitter, rng.uniform(-sampler["hue"], sampler["hue"], size=rows), 0.0)
    params[:, 9] = rng.random(rows) < sampler["grayscale_p"]
    return np.repeat(params, n_images, axis=0) if shared else params


def draw_start_noise(rng: np.random.Generator, shape: tuple[int, ...], step: dict) -> np.ndarray:
    """float32 offset of the random start (Algorithm 1, line 4): uniform in the L-inf ball, or
    a uniform direction times a radius uniform in [0, eps] for L2; zeros without random start."""
    if not step["random_start"]:
        return np.zeros(shape, np.float32)
    eps = np.float32(step["eps"])
    if step["norm"] == "linf":
        return ((rng.random(shape, dtype=np.float32) * 2 - 1) * eps).astype(np.float32)
    direction = rng.standard_normal(shape).astype(np.float32)
    norms = np.sqrt((direction.reshape(shape[0], -1) ** 2).sum(1)).clip(1e-12)
    radius = rng.random(shape[0], dtype=np.float32) * eps
    return (direction / norms.reshape(-1, *[1] * (len(shape) - 1))
            * radius.reshape(-1, *[1] * (len(shape) - 1))).astype(np.float32)


def _contrastive_randoms(rng, n, h, w, objective: dict) -> dict[str, np.ndarray]:
    return {"view_params": draw_view_params(rng, n, h, w, objective["view_sampler"])}


def _no_randoms(rng, n, h, w, objective: dict) -> dict[str, np.ndarray]:
    return {}


# One step's random inputs per objective (sidecar "objective.name"): a new exportable objective
# adds its host sampler here, drawing what its ExportableObjective.draw draws. SOAP's
# objectives are deterministic at test time (no corruption, a fixed view) and draw nothing.
SAMPLERS = {"contrastive": _contrastive_randoms, "rotation": _no_randoms, "consistency": _no_randoms,
            "reconstruction": _no_randoms}


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxPurifier:
    """Purify + classify with an exported model (see :func:`pyengine.deploy.export_onnx`).

    Args:
        path: the .onnx file; its sidecar ``<path>.json`` must lie beside it.
        providers: ONNX Runtime execution providers; default CUDA when present, else CPU.
        seed: seed of the host sampler (``None``: fresh entropy each instance).
        steps: K for a one-step model (default: the sidecar's); an unrolled model has K fixed.
        session: anything with onnxruntime's ``run(output_names, feeds)``, e.g. a
            :class:`pyengine.deploy.tensorrt.TensorRTRunner` of a plan built from this model.
    """

    def __init__(self, path, *, providers: list[str] | None = None, seed: int | None = None,
                 steps: int | None = None, session=None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"sidecar {meta_path} not found: export_onnx writes it beside the model")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != "pyengine-onnx-purifier" or self.meta.get("format_version") != 1:
            raise ValueError(f"{meta_path} is not a version-1 pyengine ONNX sidecar")
        if self.meta["view_param_columns"] != VIEW_PARAM_COLUMNS:
            raise ValueError(f"{meta_path} orders view parameters as {self.meta['view_param_columns']}, "
                             f"this runtime as {VIEW_PARAM_COLUMNS}")
        self.form, self.batch = self.meta["form"], self.meta["batch"]
        self.image_shape = (self.batch, *self.meta["image_size"])
        if steps is not None and self.form == "unrolled" and steps != self.meta["steps"]:
            raise ValueError(f"this unrolled model runs K={self.meta['steps']} steps; export a one-step "
                             f"model to choose K at run time (got steps={steps})")
        self.steps = self.meta["steps"] if steps is None else int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if session is None:
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=providers or default_providers())
        self.session = session
        self.rng = np.random.default_rng(seed)

    @property
    def providers(self) -> list[str]:
        get = getattr(self.session, "get_providers", None)
        return get() if get else [type(self.session).__name__]

    def check_input(self, x, name: str = "x") -> np.ndarray:
        """Raise TypeError/ValueError unless ``x`` is a finite float32 array of the model's shape in [0, 1]."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of float32 images, got {type(x).__name__}")
        if x.dtype != np.float32:
            hint = " (convert uint8 images with x.astype(np.float32) / 255)" if x.dtype == np.uint8 else ""
            raise TypeError(f"{name} must have dtype float32, got {x.dtype}{hint}")
        if x.shape != self.image_shape:
            raise ValueError(f"{name} must have shape {self.image_shape} (the exported batch and image size), "
                             f"got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
        return np.ascontiguousarray(x)

    def draw(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Fresh (start_noise [N,3,H,W], {name: [K, ...]}) for one call."""
        n, _, h, w = self.image_shape
        noise = draw_start_noise(self.rng, self.image_shape, self.meta["step"])
        objective = self.meta["objective"]
        sampler = SAMPLERS.get(objective["name"])
        if sampler is None:
            raise NotImplementedError(f"the runtime has no sampler for objective {objective['name']!r} "
                                      f"(known: {sorted(SAMPLERS)}); pass start_noise and randoms explicitly")
        steps = [sampler(self.rng, n, h, w, objective) for _ in range(self.steps)]
        return noise, {name: np.stack([s[name] for s in steps]) for name in steps[0]}

    def _check_draws(self, start_noise, randoms) -> tuple[np.ndarray, dict]:
        expected = {name: (self.steps, *shape) for name, shape in self.meta["random_inputs"].items()}
        if set(randoms) != set(expected):
            raise ValueError(f"randoms must hold {sorted(expected)}, got {sorted(randoms)}")
        out = {}
        for name, shape in {"start_noise": self.image_shape, **expected}.items():
            value = start_noise if name == "start_noise" else randoms[name]
            value = np.asarray(value)
            if value.shape != shape or value.dtype != np.float32:
                raise ValueError(f"{name} must be float32 {shape}, got {value.dtype} {value.shape}")
            out[name] = np.ascontiguousarray(value)
        return out.pop("start_noise"), out

    def purify(self, x: np.ndarray, *, start_noise: np.ndarray | None = None,
               randoms: dict[str, np.ndarray] | None = None) -> OnnxPurifyResult:
        """x: float32 [N, 3, H, W] in [0, 1] -> (logits [N, C], purified images [N, 3, H, W]).

        ``start_noise`` and ``randoms`` (each random input with a leading K axis) replace the
        host sampler's draws, e.g. to feed the torch engine's own draws.
        """
        x = self.check_input(x)
        if (start_noise is None) != (randoms is None):
            raise ValueError("pass both start_noise and randoms, or neither")
        if start_noise is None:
            start_noise, randoms = self.draw()
        start_noise, randoms = self._check_draws(start_noise, randoms)
        if self.form == "unrolled":
            feeds = {"x": x, "start_noise": start_noise, **randoms}
            # A min-aux model starts every radius at x itself and has no start_noise input.
            feeds = {i["name"]: feeds[i["name"]] for i in self.meta["inputs"]}
            logits, images = self.session.run(["logits", "purified"], feeds)
            return OnnxPurifyResult(logits, images)
        xk = np.clip(x + start_noise, 0, 1)
        for k in range(self.steps):
            logits, xk = self.session.run(["logits", "x_next"],
                                          {"x": x, "x_k": xk, **{n: r[k] for n, r in randoms.items()}})
        return OnnxPurifyResult(logits, xk)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits of the purified input, float32 [N, C]."""
        return self.purify(x).logits
