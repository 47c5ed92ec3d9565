"""Named attacks: ``build_attack("pgd50", classifier=..., eps=8/255)`` and suites of them.

Spec grammar (case-insensitive; ``N`` steps, ``E`` EOT draws, ``L`` a number):

static (on the undefended classifier)
    ``fgsm``, ``pgdN`` (random start), ``bimN`` (no random start), ``cwN`` (margin-loss PGD,
    the paper's C&W), ``pgdl2-N``, ``cwl2[-N]``, ``deepfool``, ``autoattack`` (standard);
    SOAP's Table 2 attacks with the paper's own budgets (:mod:`.paper`): ``soap-fgsm``,
    ``soap-pgd20``, ``soap-cw``, ``soap-deepfool`` (``soap-table2`` in a list: all four).
adaptive (on the defense; need ``purifier=``)
    ``aware-pgdN@L`` / ``aware-cwN@L`` / ``aware-pgdl2-N@L``: defense-aware, lam = L (Eq. 8);
    ``aware-bimN@beta=B``: SOAP's weight beta = B on its paper's scale (converted to lam by
    :func:`pyengine.soap.beta_to_lam`; SOAP's own adaptive attack is ``aware-bim20@beta=B``);
    ``S[-eot[E]]-G`` with surrogate ``S`` in ``bpda``, ``bpda-iterates``, ``unrolled`` and a
    gradient attack ``G`` in ``pgdN``, ``bimN``, ``cwN``, ``pgdl2-N``, ``fgsm`` or ``apgd``
    (APGD-CE + APGD-DLR). Without ``-eot`` the attacker replays the defender's draws
    (deterministic evaluation); with it every forward draws afresh and gradients average
    over ``E`` draws (default ``eot=20``);
    ``apgd-eot[E]`` = ``bpda-eot[E]-apgd`` (AutoAttack's randomized version), also
    ``S-apgd-eot[E]``; ``transfer-X``: static spec ``X`` evaluated on the defense.

Counts are bounded: ``N`` in [1, MAX_STEPS], ``E`` in [1, MAX_EOT], ``L`` finite.

Budgets: the L-inf specs use ``eps``, or ``norm="l2"`` makes them L2; ``pgdl2``, ``cwl2``
and ``deepfool`` are L2 and use ``eps`` when ``norm="l2"``, else ``eps_l2``. Steps are
eps/4 (the papers' 2/255 at 8/255) unless ``step_size`` is given. APGD runs 100 steps.
"""
from __future__ import annotations

import difflib
import math
import re
from typing import Sequence

from torch import nn

from .base import Attack, Transfer
from .defended import BPDA, BPDAIterates, Unrolled
from .external import AutoAttack, CWL2, DeepFool
from .gradient import BIM, FGSM, PGD, DefenseAwarePGD
from .paper import SOAP_TABLE2, soap_attack

EXAMPLES = (
    "fgsm", "pgd50", "pgd200", "pgdl2-50", "bim200", "cw200", "cwl2", "deepfool", "autoattack",
    "aware-pgd50@4", "bpda-pgd50", "bpda-eot-pgd50", "bpda-iterates-pgd50", "unrolled-pgd50",
    "unrolled-eot-pgd50", "unrolled-eot4-pgd50", "apgd-eot", "unrolled-apgd-eot", "transfer-pgd50", *SOAP_TABLE2,
)
# "adaptive" in a spec list: the attacks whose per-image worst case is the adaptive number.
ADAPTIVE_SUITE = ("transfer-pgd50", "bpda-pgd50", "bpda-iterates-pgd50", "unrolled-pgd50",
                  "unrolled-eot-pgd50", "apgd-eot")
SUITES = {"adaptive": ADAPTIVE_SUITE, "soap-table2": SOAP_TABLE2}
SURROGATES = {"bpda": BPDA, "bpda-iterates": BPDAIterates, "unrolled": Unrolled}

_GRADIENT = re.compile(r"^(?:(?P<fgsm>fgsm)|(?P<kind>pgd|bim|cw)(?P<steps>\d+)|pgdl2-(?P<l2>\d+))$")
_AWARE = re.compile(r"^aware-(?P<base>.+)@(?P<lam>[^@]+)$")
_SURROGATE = re.compile(r"^(?P<sur>bpda-iterates|bpda|unrolled)(?:-(?P<eot>eot)(?P<count>\d*))?-(?P<base>.+)$")
_APGD = re.compile(r"^apgd(?:-(?P<eot>eot)(?P<count>\d*))?$")
_CWL2 = re.compile(r"^cwl2(?:-(?P<steps>\d+))?$")
# Beyond these a run would not finish (the papers use at most 1,000 steps and 20 EOT draws);
# a typo such as pgd99999999999 must be refused, not run until killed.
MAX_STEPS = 10_000
MAX_EOT = 1_000


def list_attacks() -> list[str]:
    """Example specs (every form of the grammar in the module doc)."""
    return list(EXAMPLES)


def expand_specs(specs: str | Sequence[str]) -> list[str]:
    """``"pgd50,adaptive"`` -> ``["pgd50", *ADAPTIVE_SUITE]``: comma-split, the names of
    ``SUITES`` (``adaptive``, ``soap-table2``) expanded, duplicates dropped (first kept)."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out: list[str] = []
    for item in (s.strip().lower() for s in items):
        for spec in SUITES.get(item, (item,) if item else ()):
            if spec not in out:
                out.append(spec)
    return out


def _unknown(spec: str, why: str = "") -> ValueError:
    close = difflib.get_close_matches(spec, [*EXAMPLES, *SUITES], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown attack spec {spec!r}{why}{hint} (forms: fgsm, pgd<N>, bim<N>, cw<N>, pgdl2-<N>, "
                      "cwl2[-<N>], deepfool, autoattack, soap-fgsm, soap-pgd20, soap-cw, soap-deepfool, aware-pgd<N>@<lam>, {bpda,bpda-iterates,unrolled}"
                      "[-eot[<E>]]-{pgd<N>,cw<N>,apgd}, apgd-eot[<E>], transfer-<static spec>; see "
                      "pyengine.attacks.suite)")


def _positive(text: str, spec: str, what: str) -> int:
    value, high = int(text), MAX_EOT if what == "EOT count" else MAX_STEPS
    if not 1 <= value <= high:
        raise ValueError(f"attack spec {spec!r}: {what} must be >= 1 and <= {high}, got {value}")
    return value


def build_attack(spec: str, *, classifier: nn.Module | None = None, purifier: nn.Module | None = None,
                 eps: float, norm: str = "linf", seed: int = 0, eps_l2: float = 0.5, eot: int = 20,
                 step_size: float | None = None) -> Attack:
    """The attack named by ``spec`` (grammar in the module doc), with ``attack.name == spec``.

    Args:
        classifier: the undefended classifier (default: ``purifier.classifier``).
        purifier: the defense; required by adaptive specs.
        eps, norm: the threat model; eps_l2: budget of the L2-only specs when norm is "linf".
        seed: the defender's seed (defended models use it when the attack's generator is
            not a CounterRandom, and warn when a shared-draw attack is given another seed).
        eot: draws per gradient for ``-eot`` specs without a count.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"attack spec must be a non-empty string, got {spec!r}")
    name = spec.strip().lower()
    if classifier is None:
        if purifier is None:
            raise ValueError(f"build_attack({spec!r}) needs classifier= (or purifier=)")
        classifier = purifier.classifier
    l2_eps = eps if norm == "l2" else eps_l2
    options = dict(eps=eps, norm=norm, l2_eps=l2_eps, step_size=step_size)

    if name.startswith("transfer-"):
        source = _static(name[len("transfer-"):], classifier, **options)
        if source is None:
            raise _unknown(name, " (transfer- takes a static spec)")
        return Transfer(source, name=name)
    static = _static(name, classifier, **options)
    if static is not None:
        return static

    aware, surrogate, apgd = _AWARE.match(name), _SURROGATE.match(name), _APGD.match(name)
    if not (aware or surrogate or (apgd and apgd["eot"])):
        raise _unknown(name)
    if purifier is None:
        raise ValueError(f"attack {spec!r} is adaptive (it attacks the defense): pass purifier=")
    if aware:
        text = aware["lam"]
        paper_scale = text.startswith("beta=")  # SOAP's beta (its Figure 5 axis), not lam
        text = text[len("beta="):] if paper_scale else text
        try:
            lam = float(text)
        except ValueError:
            raise ValueError(f"attack spec {spec!r}: lambda must be a number, got {aware['lam']!r}") from None
        if not math.isfinite(lam):
            raise ValueError(f"attack spec {spec!r}: lambda must be a finite number, got {aware['lam']!r}")
        if paper_scale and getattr(purifier.objective, "task", None) is None:
            raise ValueError(f"attack spec {spec!r}: beta= is SOAP's scale, but the purifier's objective is "
                             f"{type(purifier.objective).__name__}: write @<lam>")
        parts = _GRADIENT.match(aware["base"])
        if parts is None or parts["fgsm"]:
            raise _unknown(name, " (aware- takes pgd<N>, cw<N>, bim<N> or pgdl2-<N>)")
        kind, steps, attack_norm, attack_eps = _gradient_parts(parts, name, eps, norm, l2_eps)
        weight = {"beta": lam} if paper_scale else {"lam": lam}
        return DefenseAwarePGD(classifier, purifier.objective, **weight, eps=attack_eps, steps=steps, norm=attack_norm,
                               step_size=step_size, random_start=kind != "bim",
                               loss="margin" if kind == "cw" else "ce", name=name)

    if apgd:  # apgd-eot[E] alone: BPDA, fresh draws
        sur, fresh, count, base = "bpda", True, apgd["count"], "apgd"
    else:
        sur, base = surrogate["sur"], surrogate["base"]
        fresh, count = bool(surrogate["eot"]), surrogate["count"]
        inner = _APGD.match(base)
        if inner:
            base = "apgd"
            if inner["eot"]:
                fresh, count = True, count or inner["count"]
    draws = _positive(count, name, "EOT count") if count else eot
    model = SURROGATES[sur](purifier, randomness="fresh" if fresh else "shared", seed=seed)
    if base == "apgd":
        return AutoAttack(model, eps=eps, norm=norm, version="rand", eot_iter=draws if fresh else 1, name=name)
    parts = _GRADIENT.match(base)
    if parts is None:
        raise _unknown(name, f" ({sur}- takes pgd<N>, bim<N>, cw<N>, pgdl2-<N>, fgsm or apgd)")
    kind, steps, attack_norm, attack_eps = _gradient_parts(parts, name, eps, norm, l2_eps)
    # Shared draws make the defended model deterministic: its first misclassified iterate is
    # misclassified by the defender too, so keeping it is exact.
    return PGD(model, eps=attack_eps, steps=steps, norm=attack_norm,
               step_size=attack_eps if kind == "fgsm" else step_size, random_start=kind in ("pgd", "cw"),
               loss="margin" if kind == "cw" else "ce", eot=draws if fresh else 1, keep_best=not fresh, name=name)


def _gradient_parts(parts: re.Match, spec: str, eps: float, norm: str, l2_eps: float):
    if parts["fgsm"]:
        return "fgsm", 1, norm, eps
    if parts["l2"]:
        return "pgd", _positive(parts["l2"], spec, "steps"), "l2", l2_eps
    return parts["kind"], _positive(parts["steps"], spec, "steps"), norm, eps


def _static(name: str, classifier: nn.Module, *, eps, norm, l2_eps, step_size) -> Attack | None:
    parts = _GRADIENT.match(name)
    if parts:
        kind, steps, attack_norm, attack_eps = _gradient_parts(parts, name, eps, norm, l2_eps)
        if kind == "fgsm":
            return FGSM(classifier, eps=attack_eps, norm=attack_norm, name=name)
        if kind == "bim":
            return BIM(classifier, eps=attack_eps, steps=steps, norm=attack_norm, step_size=step_size, name=name)
        return PGD(classifier, eps=attack_eps, steps=steps, norm=attack_norm, step_size=step_size,
                   loss="margin" if kind == "cw" else "ce", name=name)
    cw = _CWL2.match(name)
    if cw:
        steps = _positive(cw["steps"], name, "steps") if cw["steps"] else 100
        return CWL2(classifier, eps=l2_eps, steps=steps, name=name)
    if name == "deepfool":
        return DeepFool(classifier, eps=l2_eps, name=name)
    if name == "autoattack":
        return AutoAttack(classifier, eps=eps, norm=norm, version="standard", name=name)
    return soap_attack(name, classifier)
