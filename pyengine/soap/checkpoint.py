"""SOAP checkpoints: the classifier plus its auxiliary head (purifiers from them:
:func:`pyengine.load_purifier`).

``train_classifier(..., aux=...)`` writes the head under ``aux.<task>.*`` and records in
the manifest ``aux_task``, ``aux_alpha``, ``aux_noise_sigma`` and ``aux_head`` (the head's
sizes, from which it is rebuilt). Label consistency has no head (h = g), so any
classifier checkpoint can be purified with it, though only one trained with it does well.
"""
from __future__ import annotations

from torch import nn

from ..models.aux_heads import AUX_TASKS, build_aux_head
from ..models.checkpoint import Checkpoint, CheckpointError


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
