"""Attacks on classifiers and on purified (defended) classifiers.

Static attacks act on the undefended classifier; adaptive ones know the defense
(defense-aware loss, BPDA, unrolled gradients, transfer). Every attack has
``perturb(x, y, *, generator=None) -> x_adv`` and an ``adaptive`` flag; build them by name
with :func:`build_attack`, evaluate them per image with :func:`attack_robust_only`, and
check an evaluation with :mod:`pyengine.attacks.checks`.

Randomized defenses (random start, random views), with ``gen = CounterRandom(seed, indices)``
the defender's draws for the batch:

- deterministic evaluation: attacker and defender share draws. Build a shared-draw attack
  (``build_attack("bpda-pgd50", ..., seed=seed)``) and call ``perturb(x, y, generator=gen)``;
  the defended model replays ``gen``'s seed on every forward, the very function the defender
  evaluates with ``purifier.purify(x_adv, generator=gen)``.
- EOT evaluation: fresh draws per gradient. Build an ``-eot`` attack
  (``"unrolled-eot-pgd50"``, ``"apgd-eot"``): every forward forks a new stream (reproducible
  from ``gen``) and each step averages the gradient over ``eot`` draws.
"""
from .base import Attack, RobustResult, Transfer, attack_robust_only, check_labels, margin_loss, project
from .checks import EvaluationWarning, check_eot, check_gradients, compare_with_transfer, is_randomized
from .defended import BPDA, BPDAIterates, DefendedModel, Unrolled
from .external import AutoAttack, CWL2, DeepFool, TorchAttack, require_torchattacks
from .gradient import BIM, FGSM, LAMBDA_SWEEP, PGD, CWLinf, DefenseAwarePGD, defense_aware_sweep
from .suite import ADAPTIVE_SUITE, build_attack, expand_specs, list_attacks

__all__ = [
    "ADAPTIVE_SUITE", "Attack", "AutoAttack", "BIM", "BPDA", "BPDAIterates", "CWL2", "CWLinf", "DeepFool",
    "DefendedModel", "DefenseAwarePGD", "EvaluationWarning", "FGSM", "LAMBDA_SWEEP", "PGD", "RobustResult",
    "TorchAttack", "Transfer", "Unrolled", "attack_robust_only", "build_attack", "check_eot", "check_gradients",
    "check_labels", "compare_with_transfer", "defense_aware_sweep", "expand_specs", "is_randomized",
    "list_attacks", "margin_loss", "project", "require_torchattacks",
]
