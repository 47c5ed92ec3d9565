"""Model sources: the classifier a user brings, wrapped to take images in [0, 1].

A source is one string:

- a registry name (``preact_resnet18``): :func:`pyengine.models.create_model`;
- ``torchvision:NAME`` or ``timm:NAME``: the architecture built with random initialisation
  (``weights=None`` / ``pretrained=False``), then the weights read from a local file
  (safetensors, or a state dict read with ``torch.load(weights_only=True)``); nothing is
  downloaded;
- a path to an exported program (``torch.export.save``, ``.pt2``; export it with a dynamic
  batch dimension) or a TorchScript file (``.pt``/``.ts`` with ``forward_features`` and
  ``forward_head`` methods, as scripted timm models have).

:func:`load_model` returns a :class:`~pyengine.models.HookedFeatures` whose normalisation
(mean, std) is part of the model, so purification works in [0, 1] pixel space, and whose
feature layer is named or found: the input of the last ``nn.Linear`` (the pooled penultimate
features). :attr:`SourcedModel.record` is what a defended checkpoint stores to rebuild it.
"""
from __future__ import annotations

import difflib
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..resume import file_sha256
from .features import HookedFeatures

PREFIXES = ("torchvision", "timm")
PROGRAM_SUFFIXES = {".pt2": "exported", ".pt": "torchscript", ".ts": "torchscript", ".jit": "torchscript"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TAP = "pyengine_features"  # the identity module spliced into an exported program's graph
_torchvision_ops: torch.library.Library | None = None


class ModelSourceError(ValueError):
    """A model source, its weights or its feature layer cannot be used."""


def import_torchvision():
    """torchvision, importable with a CPU-only torch.

    PyPI's Linux wheels of torchvision are CUDA builds: with a CPU-only torch their C++ ops
    cannot load, and torchvision 0.28's import then fails registering fake kernels for two of
    them (``nms``, ``qnms``). The models need none of its C++ ops, so on that failure the two
    schemas are defined (without kernels) and the import is retried.
    """
    global _torchvision_ops
    try:
        import torchvision
        return torchvision
    except ModuleNotFoundError:
        raise ImportError("torchvision is not installed: pip install torchvision (matching your torch)") from None
    except RuntimeError as err:
        if "torchvision::" not in str(err) or _torchvision_ops is not None:
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _torchvision_ops = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _torchvision_ops.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    warnings.warn("torchvision's C++ ops do not load with this torch (a CUDA build of torchvision with a CPU "
                  "torch?); its models work, its detection ops do not", RuntimeWarning, stacklevel=2)
    import torchvision
    return torchvision


def import_timm():
    import_torchvision()  # timm imports torchvision
    try:
        import timm
    except ModuleNotFoundError:
        raise ImportError("timm is not installed: pip install timm") from None
    return timm


def parse_source(source: str) -> tuple[str, str]:
    """``(kind, name)``: kind is "registry", "torchvision", "timm", "exported" or "torchscript"."""
    if not isinstance(source, str) or not source:
        raise ModelSourceError(f"model source must be a non-empty string, got {source!r}")
    if ":" in source and not Path(source).exists():
        prefix, name = source.split(":", 1)
        if prefix not in PREFIXES:
            raise ModelSourceError(f"unknown model source prefix {prefix!r} in {source!r}; use "
                                   f"{' or '.join(p + ':NAME' for p in PREFIXES)}, a registry name, or a .pt2/.pt file")
        return prefix, name
    suffix = Path(source).suffix.lower()
    if suffix in PROGRAM_SUFFIXES:
        return PROGRAM_SUFFIXES[suffix], source
    return "registry", source


def _unknown(name: str, known: list[str], what: str) -> ModelSourceError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelSourceError(f"unknown {what} model {name!r}{hint}")


def _build_architecture(kind: str, name: str, num_classes: int) -> nn.Module:
    if kind == "timm":
        timm = import_timm()
        if name not in timm.list_models():
            raise _unknown(name, timm.list_models(), "timm")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    tv = import_torchvision()
    names = tv.models.list_models(module=tv.models)
    if name not in names:
        raise _unknown(name, names, "torchvision")
    return tv.models.get_model(name, weights=None, num_classes=num_classes)


def default_normalization(kind: str, name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the architecture's published weights expect, where known: timm's
    ``pretrained_cfg``, torchvision's weights' transforms; None otherwise."""
    try:
        if kind == "timm":
            cfg = import_timm().models.get_pretrained_cfg(name)
            return (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else None
        if kind == "torchvision":
            transforms = import_torchvision().models.get_model_weights(name).DEFAULT.transforms()
            return tuple(transforms.mean), tuple(transforms.std)
    except (ValueError, KeyError, AttributeError, RuntimeError):
        return None
    return None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a ``torch.save`` file read with ``weights_only=True``
    (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"weights file not found: {path}")
    try:
        if zipfile.is_zipfile(path):  # torch.save's format; anything else is read as safetensors
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
    except Exception as err:  # safetensors, pickle and zip readers raise many types for a bad file
        raise ModelSourceError(f"cannot read weights {path}: {type(err).__name__}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path} does not hold a state dict of tensors")
    return state


def _last_linear(model: nn.Module) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelSourceError(f"{type(model).__name__} has no nn.Linear to find its features by; "
                               "name the feature layer (layer=...)")
    return names[-1]


def _num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Classes of the weights: the out size of the architecture's last Linear as the weights hold it."""
    key = f"{_last_linear(model)}.weight"
    if key not in state:
        raise ModelSourceError(f"the weights hold no {key!r}, the classifier layer of {type(model).__name__}; "
                               "are they weights of this architecture?")
    return int(state[key].shape[0])


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load; ModelSourceError listing missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape (weights vs model)", shapes)) if items]
        raise ModelSourceError(f"the weights {where} do not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _load_program(kind: str, path: Path, layer: str | None) -> tuple[nn.Module, str, str]:
    """(module, layer, read) for an exported program or TorchScript file."""
    if not path.is_file():
        raise ModelSourceError(f"model file not found: {path}")
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise ModelSourceError(f"cannot read TorchScript {path}: {err}") from err
        if layer is not None or not all(hasattr(module, m) for m in ("forward_features", "forward_head")):
            raise ModelSourceError(f"{path}: a TorchScript model is read through its forward_features and "
                                   "forward_head methods (scripted timm models have them), and no layer can be "
                                   "named; export other models with torch.export (.pt2)")
        return _ScriptedFeatures(module), "features", "output"
    try:
        graph_module = torch.export.load(str(path)).module()
    except Exception as err:  # torch.export.load raises many types for a file it cannot read
        raise ModelSourceError(f"cannot read exported program {path}: {type(err).__name__}: {err}") from err
    # A plain GraphModule: the exported one refuses .eval(), which every purifier calls.
    return _tap_graph(torch.fx.GraphModule(graph_module, graph_module.graph), layer, path), _TAP, "output"


def _tap_graph(gm: torch.fx.GraphModule, layer: str | None, path: Path) -> torch.fx.GraphModule:
    """Splice an identity module after the feature node (named, or the input of the last linear)."""
    nodes = list(gm.graph.nodes)
    if layer is None:
        linears = [n for n in nodes if n.op == "call_function" and n.target in (torch.ops.aten.linear.default,
                                                                                 torch.ops.aten.addmm.default)]
        if not linears:
            raise ModelSourceError(f"{path}: no linear layer in the program to find its features by; name a node")
        last = linears[-1]
        node = last.args[0] if last.target == torch.ops.aten.linear.default else last.args[1]
    else:
        by_name = {n.name: n for n in nodes if n.op not in ("placeholder", "output", "get_attr")}
        if layer not in by_name:
            close = difflib.get_close_matches(layer, list(by_name), n=5, cutoff=0.5)
            raise ModelSourceError(f"{path}: no node {layer!r} in the program's graph"
                                   f"{'; did you mean ' + ', '.join(close) + '?' if close else ''} "
                                   f"(last nodes: {', '.join(list(by_name)[-5:])})")
        node = by_name[layer]
    gm.add_submodule(_TAP, nn.Identity())
    with gm.graph.inserting_after(node):
        tap = gm.graph.call_module(_TAP, (node,))
    node.replace_all_uses_with(tap, delete_user_cb=lambda user: user is not tap)
    gm.recompile()
    return gm


class _ScriptedFeatures(nn.Module):
    """A TorchScript model read as forward_features -> ``features`` (an identity, hooked) -> forward_head."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.features = module, nn.Identity()

    def forward(self, x):
        return self.module.forward_head(self.features(self.module.forward_features(x)))


class SourcedModel(HookedFeatures):
    """A user's classifier from a source: images in [0, 1] in, logits out, features from ``layer``.

    ``record`` (JSON) says how to rebuild it: source, weights file name and sha256,
    number of classes, normalisation, feature layer and ``num_features``.
    """

    record: dict


def load_model(source: str, *, weights: str | Path | None = None, num_classes: int | None = None,
               mean=None, std=None, layer: str | None = None, image_size: int | tuple[int, int] = 224,
               expect_sha256: str | None = None) -> nn.Module:
    """The classifier of ``source`` (see the module doc), in eval mode, taking [0, 1] images.

    Args:
        weights: the state dict file of a torchvision/timm architecture (required for them);
            a registry model without it keeps its random initialisation.
        num_classes: default: read from the weights (the last Linear's rows).
        mean, std: the model's input normalisation; default: the published weights' values
            for torchvision/timm names, none for programs (give them if the model expects them).
        layer: the module (or, for a ``.pt2``, graph node) whose output are the features;
            default: the input of the last ``nn.Linear``.
        image_size: the size the model will see; one probe pass reads ``num_features``.
        expect_sha256: refuse weights (or a program file) whose digest differs.
    """
    kind, name = parse_source(source)
    if kind == "registry":
        from .registry import create_model

        if layer is not None:
            raise ModelSourceError(f"registry model {name!r} reads its own penultimate features; drop layer")
        state = None
        if weights is not None:  # a state dict, or a pyengine checkpoint's classifier.* tensors
            state = read_weights(weights)
            if any(k.startswith("classifier.") for k in state):
                state = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
            if num_classes is None and "fc.weight" in state:
                num_classes = int(state["fc.weight"].shape[0])
        norm = {} if mean is None and std is None else {"mean": tuple(mean), "std": tuple(std)}
        try:
            model = create_model(name, num_classes=num_classes or 10, **norm)
        except ValueError as err:
            raise ModelSourceError(f"{err}; or use torchvision:NAME, timm:NAME or a .pt2/.pt file") from None
        if state is not None:
            load_state(model, state, str(weights))
        return model.eval().requires_grad_(False)
    digest_of = Path(name) if kind in ("exported", "torchscript") else weights
    if digest_of is None:
        raise ModelSourceError(f"{source}: give the weights file (weights=, --weights); nothing is downloaded")
    digest_of = Path(digest_of).expanduser()
    if not digest_of.is_file():
        raise ModelSourceError(f"{'model' if digest_of == Path(name) else 'weights'} file not found: {digest_of}")
    digest = file_sha256(digest_of)
    if expect_sha256 is not None and digest != expect_sha256:
        raise ModelSourceError(f"{digest_of} is not the file this checkpoint was trained on: sha256 {digest[:16]}..., "
                               f"expected {expect_sha256[:16]}...; give the original file")
    if kind in ("exported", "torchscript"):
        if weights is not None:
            raise ModelSourceError(f"{source} holds its own weights; drop weights=")
        module, hook, read = _load_program(kind, digest_of, layer)
    else:
        state = read_weights(digest_of)
        module = _build_architecture(kind, name, 1000)
        classes = num_classes or _num_classes(module, state)
        if classes != 1000:
            module = _build_architecture(kind, name, classes)
        load_state(module, state, str(digest_of))
        hook, read = (layer, "output") if layer is not None else (_last_linear(module), "input")
    if mean is None and std is None and kind in PREFIXES:
        mean, std = default_normalization(kind, name) or (None, None)
    try:
        model = SourcedModel(module.eval(), hook, mean=mean, std=std, read=read)
    except ValueError as err:
        raise ModelSourceError(str(err)) from None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    try:
        with torch.no_grad():
            # Three images: purification feeds n_views x N, so a program fixed to one batch size fails here.
            features, logits = model._features_and_logits(torch.rand(3, 3, *size))
    except (RuntimeError, ValueError, AssertionError) as err:  # an exported program's guards assert
        raise ModelSourceError(f"{source} does not run on a batch of 3 images of {size[0]}x{size[1]}"
                               f"{' (export it with a dynamic batch dimension)' if kind == 'exported' else ''}: "
                               f"{type(err).__name__}: {err}") from err
    model.record = {
        "source": source if kind in PREFIXES else digest_of.name, "kind": kind,
        "weights": {"file": digest_of.name, "path": str(digest_of.resolve()), "sha256": digest,
                    "bytes": digest_of.stat().st_size},
        "num_classes": int(logits.shape[1]),
        "normalization": None if model.mean is None else {"mean": [round(v, 6) for v in model.mean.flatten().tolist()],
                                                           "std": [round(v, 6) for v in model.std.flatten().tolist()]},
        "feature_layer": {"name": layer, "hooked": hook, "read": read}, "num_features": int(features.shape[1]),
    }
    model.requires_grad_(False)
    return model


def locate_weights(record: dict, checkpoint: Path, weights: str | Path | None = None) -> Path:
    """The file a defended checkpoint's record names: ``weights`` when given, else the path it was
    trained with, else a file of the same name beside the checkpoint."""
    if weights is not None:
        return Path(weights).expanduser()
    for candidate in (Path(record["weights"].get("path", "")), checkpoint.parent / record["weights"]["file"]):
        if candidate.name and candidate.is_file():
            return candidate
    raise ModelSourceError(f"{checkpoint} defends {record['source']} with the weights {record['weights']['file']} "
                           f"(sha256 {record['weights']['sha256'][:16]}...), found neither at "
                           f"{record['weights'].get('path')} nor beside the checkpoint; pass them (weights=, --weights)")


def rebuild(record: dict, checkpoint: Path, image_size: tuple[int, int], weights: str | Path | None = None) -> nn.Module:
    """The classifier a defended checkpoint's ``model_source`` record describes, its weights
    checked against the recorded sha256 (ModelSourceError on another file)."""
    path = locate_weights(record, checkpoint, weights)
    program = record["kind"] in ("exported", "torchscript")
    norm = record.get("normalization") or {}
    model = load_model(str(path) if program else record["source"], weights=None if program else path,
                       num_classes=record["num_classes"], mean=norm.get("mean"), std=norm.get("std"),
                       layer=record["feature_layer"]["name"], image_size=image_size,
                       expect_sha256=record["weights"]["sha256"])
    if model.record["num_features"] != record["num_features"]:
        raise ModelSourceError(f"{record['source']} now gives {model.record['num_features']} features, the checkpoint "
                               f"{checkpoint} was trained on {record['num_features']}")
    return model
