"""Eval-mode batch-norm folding: a convolution followed by a batch norm becomes one convolution.

In eval mode a BN is the per-channel affine map ``y = s * (x - mean) + beta`` with
``s = gamma / sqrt(var + eps)``, so ``BN(conv(x))`` is ``conv'(x)`` with weights ``s * W``
and bias ``s * (b - mean) + beta``: one pass over memory instead of two, in the forward and
in the input-gradient backward of every purification step. A max pool between the two
commutes with the affine map when every ``s`` is positive (airbench's conv -> pool -> BN).

The pairs are found in the model's traced graph (``torch.fx``), not from names, so any model
whose forward traces is covered: in a PreAct block, ``conv1 -> bn2`` folds (``bn1`` follows
the residual sum and does not); in airbench both BNs of each group fold. Folding is exact
in exact arithmetic; in floating point it rounds differently (tests: ``tests/test_fold.py``).
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn


def _is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target is F.max_pool2d
    return node.op == "call_module" and isinstance(modules.get(node.target), nn.MaxPool2d)


def _scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    return scale * bn.weight.double() if bn.affine else scale


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` of every Conv2d whose output goes only to a BatchNorm2d with
    running statistics (directly, or through a max pool when the BN's scale is positive),
    each module used once in ``model.forward``. Empty when the model does not trace."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any untraceable forward: folding is an optimisation, skip it
        warnings.warn(f"fold_batchnorm: {type(model).__name__} does not trace with torch.fx ({type(err).__name__}: "
                      f"{err}); its batch norms stay unfolded", RuntimeWarning, stacklevel=3)
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        nxt, through_pool = node, False
        if len(nxt.users) == 1 and _is_pool(next(iter(nxt.users)), modules):
            nxt, through_pool = next(iter(nxt.users)), True
        if len(nxt.users) != 1:
            continue
        user = next(iter(nxt.users))
        bn = modules.get(user.target) if user.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or user.args[0] is not nxt:
            continue
        if calls[node.target] != 1 or calls[user.target] != 1:
            continue  # a module used twice cannot take one folded form
        if through_pool and not bool((_scale(bn) > 0).all()):
            continue
        pairs.append((node.target, user.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every pair of :func:`foldable_pairs` folded (each BN
    replaced by ``nn.Identity``); ``model`` itself is left untouched. With nothing to fold it
    returns ``model`` (no copy). ``folded.folded_batchnorms`` lists the pairs."""
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        scale = _scale(bn)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shift = bn.bias.double() if bn.affine else 0.0
        dtype = conv.weight.dtype
        conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
        conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + shift).to(dtype),
                                 requires_grad=conv.weight.requires_grad)
        folded.set_submodule(bn_name, nn.Identity())
    folded.folded_batchnorms = pairs
    return folded
