"""SOAP checkpoints: the classifier plus its auxiliary head, and the purifiers built from them.

``train_classifier(..., aux=...)`` writes the head under ``aux.<task>.*`` and records in
the manifest ``aux_task``, ``aux_alpha``, ``aux_noise_sigma`` and ``aux_head`` (the head's
sizes, from which it is rebuilt). Label consistency has no head (h = g), so any
classifier checkpoint can be purified with it, though only one trained with it does well.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..models.aux_heads import AUX_TASKS, build_aux_head
from ..models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..purify.purifier import Purifier
from .objectives import make_objective
from .select import SOAP_DELTA, SOAP_RADII, SOAP_STEP_SIZE, SOAP_STEPS, MinAuxPurifier, soap_purifier

METHODS = ("min-aux", "fixed")


def aux_manifest(task: str, alpha: float, noise_sigma: float, head: nn.Module | None) -> dict:
    """The manifest entries of a jointly trained checkpoint."""
    return {"aux_task": task, "aux_alpha": alpha, "aux_noise_sigma": noise_sigma,
            "aux_head": head.sizes() if head is not None else None}


def load_aux_head(ckpt: Checkpoint, task: str) -> nn.Module | None:
    """Rebuild and load the head ``task`` needs from ``ckpt`` (None for consistency).

    Raises CheckpointError naming the head when the checkpoint does not carry it.
    """
    if task not in AUX_TASKS:
        raise ValueError(f"unknown auxiliary task {task!r}; expected one of {', '.join(AUX_TASKS)}")
    if task == "consistency":
        return None
    path = ckpt.manifest.get("path", "?")
    prefix = f"{task}."
    state = {k[len(prefix):]: v for k, v in ckpt.aux.items() if k.startswith(prefix)}
    trained = ckpt.manifest.get("aux_task")
    if not state:
        found = f"it was trained with aux_task={trained!r}" if trained else "it has no auxiliary head"
        raise CheckpointError(
            f"checkpoint {path} lacks the {task!r} auxiliary head (tensors aux.{task}.*) that the {task} "
            f"objective needs; {found}. Train one with `pyengine train-classifier --aux {task}`")
    sizes = ckpt.manifest.get("aux_head")
    if not isinstance(sizes, dict) or sizes.get("task") != task:
        raise CheckpointError(f"checkpoint {path} holds aux.{task}.* tensors but its manifest has no "
                              f"'aux_head' sizes for {task!r} (got {sizes!r}), so the head cannot be rebuilt")
    try:
        head = build_aux_head(task, **{k: v for k, v in sizes.items() if k != "task"})
        head.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: the {task!r} head does not match its manifest sizes "
                              f"{sizes}: {err}") from err
    device = next(ckpt.classifier.parameters()).device
    return head.to(device).eval()


def load_soap_purifier(path: str | Path, method: str = "min-aux", *, aux: str | None = None,
                       map_location="cpu", eps: float = 8 / 255, delta: float = SOAP_DELTA,
                       n_radii: int = SOAP_RADII, steps: int = SOAP_STEPS, step_size: float = SOAP_STEP_SIZE,
                       norm: str = "linf", image_size: tuple[int, int] | None | str = "checkpoint",
                       lc_crop: float | None = None) -> MinAuxPurifier | Purifier:
    """A SOAP purifier from a checkpoint written by ``train-classifier --aux TASK``.

    Args:
        method: ``"min-aux"`` (:class:`MinAuxPurifier` over radii e * delta, e = 0..n_radii)
            or ``"fixed"`` (one :class:`~pyengine.purify.Purifier` at radius ``eps``).
        aux: the objective to purify with; default the checkpoint's ``aux_task``.
        steps, step_size, norm: Algorithm 2 (T = 5, gamma = 4/255, L-inf on CIFAR).
        image_size: (H, W) to accept, None for any; default the checkpoint's
            (:attr:`~pyengine.models.Checkpoint.image_size`).
        lc_crop: label consistency's view crop, default the published paper's 24/32
            (``pyengine.soap.objectives.LC_CROP_CURRENT`` is the authors' current 28/32).

    The result carries the checkpoint's ``manifest``. Raises CheckpointError naming the
    missing head when the checkpoint lacks the head the objective needs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ckpt = load_checkpoint(path, map_location=map_location)
    task = aux if aux is not None else ckpt.manifest.get("aux_task")
    if task is None:
        raise CheckpointError(
            f"checkpoint {ckpt.manifest['path']} records no SOAP auxiliary task (manifest 'aux_task'); "
            "train one with `pyengine train-classifier --aux rotation|consistency|reconstruction`, "
            "or pass aux='consistency' to purify a plain classifier with label consistency")
    objective = make_objective(task, ckpt.classifier, load_aux_head(ckpt, task), lc_crop=lc_crop)
    size = ckpt.image_size if image_size == "checkpoint" else image_size
    if method == "fixed":
        purifier = soap_purifier(ckpt.classifier, objective, eps=eps, steps=steps, step_size=step_size, norm=norm,
                                 image_size=size)
    else:
        purifier = MinAuxPurifier(ckpt.classifier, objective, delta=delta, n_radii=n_radii, steps=steps,
                                  step_size=step_size, norm=norm, image_size=size)
    purifier.manifest = ckpt.manifest
    return purifier
