"""Checkpoints: one safetensors file whose header carries a small JSON manifest.

Tensors are stored under ``classifier.*``, ``head.*`` (the contrastive head G) and
``aux.<name>[.*]`` (auxiliary heads of other objectives, or plain tensors such as the
contrastive objective's bank of negatives). The manifest says how to rebuild
the modules (architecture, head sizes, normalisation), where the weights came from
(dataset, training command) and what they scored. Loading parses JSON and raw tensors
only: no pickle, so a checkpoint cannot run code. A tensor holding NaN or inf is refused
when saving and when loading, naming the tensor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save
from torch import nn

from ..resume import write_atomic
from .head import ContrastiveHead
from .registry import create_model, model_config

FORMAT_VERSION = 1
# Version 2: a classifier from a model source (pyengine.models.sources), referenced by its
# weights' sha256 under ``model_source`` instead of stored under ``classifier.*``.
SOURCED_FORMAT_VERSION = 2
_MANIFEST_KEY = "pyengine_manifest"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or lacks a part that was asked for."""


@dataclass
class Checkpoint:
    classifier: nn.Module
    head: ContrastiveHead | None
    manifest: dict
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) the classifier takes: the manifest's ``image_size``, else that of a
        reconstruction head (which decodes images of one size), else the architecture's."""
        size = self.manifest.get("image_size") or (self.manifest.get("aux_head") or {}).get("image_size")
        if isinstance(size, int):
            return size, size
        if size is not None:
            return tuple(size)
        try:
            return tuple(model_config(self.manifest["architecture"]).input_size[1:])
        except (KeyError, ValueError):
            return None

    def require_head(self) -> ContrastiveHead:
        if self.head is None:
            raise CheckpointError(
                f"checkpoint {self.manifest.get('path', '?')} has no contrastive head; "
                "train one with `pyengine train-head`")
        return self.head


def save_checkpoint(path: str | Path, classifier: nn.Module, *, head: ContrastiveHead | None = None,
                    aux: dict[str, nn.Module | torch.Tensor] | None = None, **manifest) -> Path:
    """Write ``classifier``, optional ``head`` and ``aux`` modules or tensors.

    A registered model (:func:`create_model`) is stored whole; a model from a source
    (:func:`pyengine.models.sources.load_model`) by its ``record``: source, weights file and
    sha256, normalisation, feature layer (the weights stay in the user's file, which loading
    checks against the digest).
    """
    path = Path(path)
    name = getattr(classifier, "model_name", None)
    record = getattr(classifier, "record", None)
    if record is not None:
        tensors = {}
        manifest = {"format_version": SOURCED_FORMAT_VERSION, "model_source": record,
                    "num_classes": record["num_classes"], "normalization": record["normalization"], **manifest}
    elif name is None:
        raise CheckpointError("save_checkpoint needs a model built by create_model (it records the name) "
                              "or by pyengine.models.sources.load_model")
    else:
        tensors = {f"classifier.{k}": v for k, v in classifier.state_dict().items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "architecture": name,
            "num_classes": classifier.fc.out_features,
            "normalization": {"mean": classifier.mean.flatten().tolist(), "std": classifier.std.flatten().tolist()},
            **manifest,
        }
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
        manifest["head"] = {"in_features": head.in_features, "hidden": head.hidden,
                            "out_features": head.out_features}
    for aux_name, part in (aux or {}).items():
        if isinstance(part, torch.Tensor):
            tensors[f"aux.{aux_name}"] = part
        else:
            tensors.update({f"aux.{aux_name}.{k}": v for k, v in part.state_dict().items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _check_finite(tensors, f"refusing to save {path}")
    return _write(path, tensors, manifest)


def _write(path: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """The safetensors file, whole or not at all: never a half-written checkpoint under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, save(tensors, metadata={_MANIFEST_KEY: json.dumps(manifest)}))
    return path


def read_manifest(path: str | Path) -> dict:
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"corrupt checkpoint {path}: {err}") from err
    if _MANIFEST_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file without a pyengine manifest")
    try:
        manifest = json.loads(meta[_MANIFEST_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt manifest in {path}: {err}") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"corrupt manifest in {path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= SOURCED_FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this pyengine reads "
                              f"versions 1..{SOURCED_FORMAT_VERSION}")
    manifest["path"] = str(path)
    return manifest


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    weights: str | Path | None = None) -> Checkpoint:
    """Rebuild classifier (eval mode), head and auxiliary tensors from ``path``.

    A checkpoint of a sourced model (``model_source``) rebuilds it from its weights file:
    ``weights`` when given, else the recorded path, else the file of that name beside the
    checkpoint; a file whose sha256 is not the recorded one is refused.
    """
    manifest = read_manifest(path)
    try:
        tensors = load_file(str(manifest["path"]), device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"corrupt checkpoint {path}: {err}") from err
    _check_finite(tensors, f"checkpoint {path}")
    # Published checkpoints may store fp16 (half the size, see convert_checkpoint); the modules,
    # the bank and every computation on them stay fp32.
    tensors = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in tensors.items()}
    head = None
    try:
        if "model_source" in manifest:
            classifier = _rebuild_sourced(manifest, weights)
        else:
            norm = manifest["normalization"]
            classifier = create_model(manifest["architecture"], num_classes=manifest["num_classes"],
                                      mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        if "head" in manifest:
            h = manifest["head"]
            head = ContrastiveHead(h["in_features"], h["hidden"], h["out_features"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its modules from the manifest: "
                              f"{type(err).__name__}: {err}") from err
    if "model_source" not in manifest:
        _load_part(classifier, tensors, "classifier.", path)
    if head is not None:
        _load_part(head, tensors, "head.", path)
    if head is not None and head.in_features != getattr(classifier, "num_features", head.in_features):
        raise CheckpointError(f"checkpoint {path}: its head takes {head.in_features} features but its classifier "
                              f"({model_name(manifest)}) gives {classifier.num_features}")
    aux = {k[len("aux."):]: v for k, v in tensors.items() if k.startswith("aux.")}
    return Checkpoint(classifier.to(map_location).eval(),
                      head.to(map_location).eval() if head is not None else None, manifest, aux)


def _rebuild_sourced(manifest: dict, weights) -> nn.Module:
    from .sources import ModelSourceError, rebuild

    size = manifest.get("image_size")
    if not isinstance(size, list) or len(size) != 2:
        raise CheckpointError(f"checkpoint {manifest['path']}: a sourced model's manifest needs image_size [H, W], "
                              f"got {size!r}")
    try:
        return rebuild(manifest["model_source"], Path(manifest["path"]), tuple(size), weights)
    except ModelSourceError as err:
        raise CheckpointError(f"checkpoint {manifest['path']}: {err}") from None


def model_name(manifest: dict) -> str:
    """The classifier a manifest describes: its registry architecture or its source."""
    return manifest.get("architecture") or manifest.get("model_source", {}).get("source", "?")


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming the first floating-point tensor holding NaN or inf."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where}: tensor {name} holds NaN or inf (a diverged training run?)")


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _load_part(module: nn.Module, tensors: dict, prefix: str, path) -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match its manifest ({prefix}*): {err}") from err


HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def convert_checkpoint(src: str | Path, dst: str | Path, *, dtype: str = "float16", **manifest) -> Path:
    """Write ``src``'s tensors to ``dst`` with every fp32 tensor stored as ``dtype`` (integer
    buffers such as batch-norm counters unchanged) and ``manifest`` entries added to its
    manifest, e.g. to ship a PreAct-ResNet-18 in 22 MB instead of 45. :func:`load_checkpoint`
    turns the tensors back into fp32. A value that does not fit ``dtype`` (beyond fp16's
    65504) raises CheckpointError naming the tensor."""
    if dtype not in HALF_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(HALF_DTYPES)}, got {dtype!r}")
    header = {k: v for k, v in read_manifest(src).items() if k != "path"}
    try:
        tensors = load_file(str(_existing(src)))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"corrupt checkpoint {src}: {err}") from err
    tensors = {k: v.to(HALF_DTYPES[dtype]).contiguous() if v.dtype == torch.float32 else v
               for k, v in tensors.items()}
    _check_finite(tensors, f"refusing to write {dst} in {dtype}")
    return _write(Path(dst), tensors, {**header, "stored_dtype": dtype, **manifest})
