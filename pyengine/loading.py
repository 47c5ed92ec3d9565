"""The one factory for purifiers from checkpoints: contrastive (Mao et al.) or SOAP (Shi et al.).

Every command (``demo``, ``eval``, ``purify``, ``parity``, ``export onnx``) and every API
entry point (:meth:`Purifier.from_checkpoint <pyengine.purify.Purifier.from_checkpoint>`)
builds its purifier here, so the defaults are the constructors' own, the same everywhere:
contrastive K = 40, eps_v = 16/255, step eps_v / 8 (``Purifier``); SOAP T = 5, gamma = 4/255,
min-aux over e * 4/255, e = 0..10 (``pyengine.soap``). A setting that does not apply to the
checkpoint is refused rather than ignored: ``eps_v`` for a SOAP checkpoint (its min-aux
selection picks each image's radius), ``soap_eps`` for a contrastive one.
"""
from __future__ import annotations

from pathlib import Path

from .models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest
from .purify import Purifier, PurifierLike, reverse_settings
from .soap.checkpoint import load_aux_head
from .soap.objectives import make_objective
from .soap.select import MinAuxPurifier, soap_purifier

KINDS = ("contrastive", "soap")


def load_purifier(path: str | Path, *, map_location="cpu", steps: int | None = None,
                  eps_v: float | None = None, precision: str | None = None, soap_eps: float | None = None,
                  aux: str | None = None, kind: str | None = None, weights: str | Path | None = None,
                  attack_eps: float | None = None, attack_norm: str = "linf", **settings) -> PurifierLike:
    """The purifier a checkpoint defines, carrying its ``manifest``.

    A checkpoint with an ``aux_task`` (or any, with ``aux``) gives SOAP's
    :class:`~pyengine.soap.MinAuxPurifier`, or with ``soap_eps`` Algorithm 2 at that one
    radius; one with a contrastive head gives the contrastive
    :class:`~pyengine.purify.Purifier`.

    Args:
        steps: K (contrastive, default 40) or T (SOAP, default 5).
        eps_v: the contrastive radius (default 2 x ``attack_eps``, else 16/255); the step
            size follows (eps_v / 8 L-inf, eps_v / 256 L2) unless ``step_size`` is given.
        attack_eps, attack_norm: the attack the contrastive purifier answers: it reverses in
            ``attack_norm`` with eps_v = 2 ``attack_eps`` (Mao et al.'s code;
            :func:`~pyengine.purify.steps.reverse_settings`). SOAP's purifiers do not depend on
            them: its code purifies in L-inf at its own radii under every attack.
        precision: the contrastive backbone's (default ``"auto"``); SOAP runs in fp32 only.
        soap_eps: SOAP at this fixed radius instead of min-aux selection.
        lc_crop (a setting): label consistency's view crop, default the published paper's
            24/32 (``pyengine.soap.objectives.LC_CROP_CURRENT``: the authors' current 28/32).
        aux: the SOAP objective (default: the checkpoint's ``aux_task``; ``"consistency"``
            needs no head, so it purifies any classifier checkpoint).
        kind: ``"contrastive"`` or ``"soap"`` to refuse a checkpoint of the other kind.
        weights: for a checkpoint of a user's model (``pyengine train-head --model``), its
            weights file (default: the path it was trained with, else the file of that name
            beside the checkpoint); a file with another sha256 is refused, and so is an
            ``image_size`` other than the one its head was trained at.
        settings: further keyword arguments of :class:`~pyengine.purify.Purifier` (e.g.
            ``cuda_graph``, ``channels_last``, ``compile``, ``seed``, ``step_size``) or, for
            SOAP, of :class:`~pyengine.soap.MinAuxPurifier` / :func:`~pyengine.soap.soap_purifier`
            (``delta``, ``n_radii``, ``step_size``, ``norm``). ``image_size`` defaults to the
            checkpoint's (:attr:`~pyengine.models.Checkpoint.image_size`); None accepts any.

    Raises ValueError (CheckpointError for a checkpoint that lacks what is asked) naming
    the setting that does not apply.
    """
    if kind not in (None, *KINDS):
        raise ValueError(f"kind must be None or one of {KINDS}, got {kind!r}")
    if "eps" in settings:
        raise TypeError("load_purifier takes the contrastive radius as eps_v (Purifier's eps) and SOAP's fixed "
                        "one as soap_eps; got eps=")
    soap = bool(aux or read_manifest(path).get("aux_task"))
    if kind is not None and kind != KINDS[soap]:
        raise ValueError(f"{path} is a {KINDS[soap]} checkpoint, not {kind}: pyengine.load_purifier(path) "
                         "builds the purifier it defines")
    if soap:
        _check_soap_settings(path, eps_v, precision)
    elif soap_eps is not None:
        raise ValueError(f"soap_eps (--soap-eps) applies to SOAP checkpoints (manifest 'aux_task'); {path} is "
                         "contrastive: use eps_v (--eps-v)")
    elif "lc_crop" in settings:
        raise ValueError(f"lc_crop sets SOAP's label-consistency view; {path} is contrastive")
    ckpt = _load(path, map_location, weights, settings)
    settings.setdefault("image_size", ckpt.image_size)
    if steps is not None:
        settings["steps"] = steps
    if soap:
        purifier = _soap(ckpt, aux or ckpt.manifest["aux_task"], soap_eps, settings)
    else:
        if attack_eps is not None:
            threat = reverse_settings(attack_eps, attack_norm, eps_v)
            eps_v, settings["norm"] = threat["eps"], threat["norm"]
        given = {"eps": eps_v, "precision": precision}
        settings.setdefault("bank", ckpt.aux.get("contrastive_bank"))
        purifier = Purifier(ckpt.classifier, ckpt.require_head(), **{k: v for k, v in given.items() if v is not None},
                            **settings)
    purifier.manifest = ckpt.manifest
    return purifier


def _load(path, map_location, weights, settings: dict) -> Checkpoint:
    """The checkpoint; for a user's model, refusing another image size than its head's."""
    ckpt = load_checkpoint(path, map_location=map_location, weights=weights)
    size = settings.get("image_size", ckpt.image_size)
    if "model_source" in ckpt.manifest and size is not None and tuple(size) != ckpt.image_size:
        raise CheckpointError(f"{path} defends {ckpt.manifest['model_source']['source']} at "
                              f"{ckpt.image_size[0]}x{ckpt.image_size[1]} pixels, where its head and bank were "
                              f"trained; got image_size={size!r}: train a head at the other size")
    return ckpt


def _check_soap_settings(path, eps_v, precision) -> None:
    if precision not in (None, "fp32"):
        raise ValueError(f"{path} is a SOAP checkpoint, whose purifiers run in fp32; got precision={precision!r}")
    if eps_v is not None:
        raise ValueError(f"eps_v (--eps-v) sets the contrastive purifier's radius, but {path} is a SOAP "
                         "checkpoint, whose min-aux selection picks each image's radius: leave it out, or, "
                         "where a command offers it, pass --soap-eps (soap_eps=) for one fixed radius")


def _soap(ckpt: Checkpoint, task: str, soap_eps: float | None, settings: dict) -> PurifierLike:
    """Algorithm 2 at ``soap_eps``, else min-aux, with ``task``'s objective."""
    objective = make_objective(task, ckpt.classifier, load_aux_head(ckpt, task), lc_crop=settings.pop("lc_crop", None))
    if soap_eps is not None:
        return soap_purifier(ckpt.classifier, objective, eps=soap_eps, **settings)
    return MinAuxPurifier(ckpt.classifier, objective, **settings)
