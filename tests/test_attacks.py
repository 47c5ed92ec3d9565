"""Attack library: budgets and strength, robust flags, defense-aware and adaptive attacks,
exact unrolled gradients, the named suite and the evaluation-mistake warnings.

A 4-class CNN on synthetic 3x8x8 images is trained in the module fixture (a few seconds),
so clean accuracy starts high and attacks have something to lower.
"""
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyengine import Purifier
from pyengine.attacks import (
    ADAPTIVE_SUITE, BIM, BPDA, CWL2, FGSM, LAMBDA_SWEEP, PGD, AutoAttack, BPDAIterates, DeepFool, DefendedModel,
    DefenseAwarePGD, EvaluationWarning, Transfer, Unrolled, attack_robust_only, build_attack, check_gradients,
    compare_with_transfer, defense_aware_sweep, expand_specs, list_attacks,
)
from pyengine.models import ContrastiveHead
from pyengine.ops import _extension as op_extension
from pyengine.ops import projection_step_reference
from pyengine.random import CounterRandom

EPS, EPS_L2 = 8 / 255, 0.5


class TinyNet(nn.Module):
    num_features = 16

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward_features(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x - 0.5)))).mean((2, 3))

    def forward(self, x):
        return self.fc(self.forward_features(x))


def synthetic(n, seed):
    protos = 0.5 + 0.12 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)).sign()
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return (protos[y] + 0.08 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1), y


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: shared CPUs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = TinyNet()
    x, y = synthetic(1024, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(120):
        i = torch.randint(0, 1024, (128,))
        opt.zero_grad()
        F.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch(model):
    x, y = synthetic(48, 2)
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return x, y


def make_purifier(model, norm="linf", steps=3, **kwargs):
    torch.manual_seed(0)
    eps, step = (16 / 255, 4 / 255) if norm == "linf" else (1.0, 0.25)
    kwargs.setdefault("precision", "fp32")  # the attacks' own loops run in fp32: compared with them value for value
    return Purifier(model, ContrastiveHead(16, 16, 8), bank=torch.randn(32, 8), steps=steps, eps=eps,
                    step_size=step, norm=norm, **kwargs)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def assert_in_budget(x_adv, x, eps, norm):
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    dist = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (dist <= eps * (1 + 1e-5) + 1e-6).all(), dist.max()


def counter(n, seed=5, offset=0):
    return CounterRandom(seed, torch.arange(n) + offset)


# ---- static attacks ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, norm", [("fgsm", "linf"), ("pgd10", "linf"), ("bim10", "linf"), ("cw10", "linf"),
                                        ("pgdl2-10", "l2"), ("pgd10", "l2")])
def test_static_attacks_lower_accuracy_within_budget(model, batch, spec, norm):
    x, y = batch
    eps = EPS if norm == "linf" else EPS_L2
    attack = build_attack(spec, classifier=model, eps=eps, norm=norm, eps_l2=EPS_L2)
    assert not attack.adaptive and attack.norm == norm and attack.name == spec
    x_adv = attack.perturb(x, y, generator=torch.Generator().manual_seed(0))
    assert_in_budget(x_adv, x, eps, norm)
    assert accuracy(model, x_adv, y) < 0.5 * accuracy(model, x, y)


def test_attack_classes_and_step_sizes(model):
    pgd = PGD(model, eps=EPS, steps=5)
    assert pgd.step_size == pytest.approx(2 / 255) and pgd.rule.random_start
    assert not BIM(model, eps=EPS, steps=5).rule.random_start
    fgsm = FGSM(model, eps=EPS)
    assert fgsm.steps == 1 and fgsm.step_size == EPS and not fgsm.rule.random_start


def test_restarts_only_lower_accuracy_and_keep_successes(model, batch):
    x, y = batch
    one = PGD(model, eps=4 / 255, steps=3).perturb(x, y, generator=counter(len(y)))
    three = PGD(model, eps=4 / 255, steps=3, restarts=3).perturb(x, y, generator=counter(len(y)))
    fooled = model(one).argmax(1) != y
    assert torch.equal(three[fooled], one[fooled])  # the first success is kept
    assert accuracy(model, three, y) <= accuracy(model, one, y)


def test_attack_robust_only_attacks_only_correct_images(model, batch):
    x, y = batch
    y = y.clone()
    y[:4] = (model(x[:4]).argmax(1) + 1) % 4  # wrong on clean input
    result = attack_robust_only(PGD(model, eps=EPS, steps=5), model, x, y, generator=counter(len(y)))
    assert torch.equal(result.images[:4], x[:4]) and not result.robust[:4].any()
    assert torch.equal(result.robust, model(result.images).argmax(1) == y)
    assert_in_budget(result.images, x, EPS, "linf")


def test_counter_random_results_do_not_depend_on_batch_mates(model, batch):
    x, y = batch
    purifier = make_purifier(model)
    for spec in ("pgd5", "bpda-pgd3"):
        attack = build_attack(spec, classifier=model, purifier=purifier, eps=EPS, seed=5)
        full = attack.perturb(x, y, generator=counter(len(y)))
        part = attack.perturb(x[10:20], y[10:20], generator=counter(10, offset=10))
        torch.testing.assert_close(full[10:20], part, rtol=0, atol=1e-6)


@pytest.mark.parametrize("y, error", [([0, 1], TypeError), (torch.zeros(3, dtype=torch.long), ValueError),
                                      (torch.zeros(48), ValueError), (torch.full((48,), -1), ValueError)])
def test_bad_labels_raise(model, batch, y, error):
    with pytest.raises(error, match="y must"):
        PGD(model, eps=EPS, steps=1).perturb(batch[0], y)


def test_bad_images_raise(model, batch):
    _, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(model, eps=EPS, steps=1).perturb(torch.rand(48, 3, 8, 8) * 2, y)


# ---- torchattacks-backed ----------------------------------------------------------------

@pytest.mark.parametrize("spec", ["cwl2", "deepfool", "autoattack"])
def test_torchattacks_attacks_run_within_budget(model, batch, spec):
    pytest.importorskip("torchattacks", reason="optional extra: pip install --no-deps torchattacks==3.5.1")
    x, y = batch[0][:24], batch[1][:24]
    attack = build_attack(spec, classifier=model, eps=EPS, eps_l2=EPS_L2)
    if isinstance(attack, AutoAttack):
        parts = attack.components(4)
        assert [p for p, _ in parts] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert parts[0][1].steps == 100 and parts[1][1].n_target_classes == 3 and parts[3][1].n_queries == 5000
        attack = AutoAttack(model, eps=EPS, steps=10, square_queries=50)  # the same suite, CPU-sized
    state = torch.get_rng_state()
    model.requires_grad_(True)  # C&W calls .backward(): trainable parameters must not collect .grad
    try:
        x_adv = attack.perturb(x, y, generator=counter(len(y)))
    finally:
        model.requires_grad_(False)
    assert torch.equal(torch.get_rng_state(), state)  # torchattacks' reseeding stays inside
    assert all(p.grad is None for p in model.parameters())
    assert_in_budget(x_adv, x, attack.eps, attack.norm)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    again = attack.perturb(x, y, generator=counter(len(y)))
    torch.testing.assert_close(again, x_adv)


@pytest.mark.parametrize("spec", ["cwl2", "deepfool", "autoattack"])
def test_torchattacks_take_channels_last_batches(model, batch, spec):
    """CIFAR-10 batches are NHWC views of the decoded images; torchattacks reshapes with .view."""
    pytest.importorskip("torchattacks", reason="optional extra: pip install --no-deps torchattacks==3.5.1")
    x, y = batch[0][:8], batch[1][:8]
    if spec == "autoattack":  # a radius too small to fool anything, so every component runs on every image
        attack = AutoAttack(model, eps=1e-3, steps=2, square_queries=5)
    else:
        attack = build_attack(spec, classifier=model, eps=EPS, eps_l2=EPS_L2)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    model.requires_grad_(True)
    try:
        torch.testing.assert_close(attack.perturb(nhwc, y, generator=counter(len(y))),
                                   attack.perturb(x, y, generator=counter(len(y))))
    finally:
        model.requires_grad_(False)


def test_missing_torchattacks_says_how_to_install(model, batch, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ImportError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        CWL2(model, eps=EPS_L2).perturb(*batch)
    with pytest.raises(ImportError, match="torchattacks"):
        DeepFool(model, eps=EPS_L2).perturb(*batch)


# ---- defense-aware ----------------------------------------------------------------------

def test_defense_aware_at_lambda_zero_equals_pgd(model, batch):
    x, y = batch
    purifier = make_purifier(model)
    pgd = PGD(model, eps=EPS, steps=5).perturb(x, y, generator=counter(len(y)))
    aware = DefenseAwarePGD(model, purifier.objective, 0.0, eps=EPS, steps=5)
    assert aware.adaptive
    assert torch.equal(aware.perturb(x, y, generator=counter(len(y))), pgd)
    torch.manual_seed(3)
    plain = PGD(model, eps=EPS, steps=5).perturb(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(aware.perturb(x, y, generator=torch.Generator().manual_seed(3)), plain)
    sweep = defense_aware_sweep(model, purifier.objective, x, y, lams=(0, 4), eps=EPS, steps=5,
                                generator=torch.Generator().manual_seed(3))
    assert list(sweep) == [0.0, 4.0] and torch.equal(sweep[0.0], plain)
    assert not torch.equal(sweep[4.0], plain)
    assert_in_budget(sweep[4.0], x, EPS, "linf")
    assert LAMBDA_SWEEP == (0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)


# ---- defended models and adaptive attacks ----------------------------------------------

def test_adaptive_worst_case_at_least_as_strong_as_static(model, batch):
    """Same images, same eps and steps: static PGD evaluated on the defense (transfer) versus the
    adaptive attacks; the adaptive number is the per-image worst case (Croce et al.), and it
    fools images that transfer does not. A single adaptive attack can be weaker than transfer
    on a few images (another local optimum): compare_with_transfer then warns."""
    x, y = batch[0][:32], batch[1][:32]
    purifier = make_purifier(model)
    judge = DefendedModel(purifier, seed=5)  # the defender: its own draws, no gradient
    gen = counter(len(y))
    with judge.bind(gen):
        clean = accuracy(judge, x, y)
    transfer = attack_robust_only(build_attack("transfer-pgd10", classifier=model, eps=EPS), judge, x, y,
                                  generator=gen)
    worst = transfer.robust.clone()
    for spec in ("bpda-pgd10", "bpda-iterates-pgd10", "unrolled-pgd10"):
        attack = build_attack(spec, classifier=model, purifier=purifier, eps=EPS, seed=5)
        assert attack.adaptive
        result = attack_robust_only(attack, judge, x, y, generator=gen)
        assert_in_budget(result.images, x, EPS, "linf")
        assert result.robust.float().mean() < clean - 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)
            gap = compare_with_transfer(result.robust, transfer.robust, name=spec)
        assert gap == pytest.approx(float(result.robust.float().mean() - transfer.robust.float().mean()))
        worst &= result.robust
    assert worst.sum() < transfer.robust.sum()


class CountingObjective(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x, generator=None):
        self.calls += 1
        return self.inner(x, generator=generator)


def unrolled_reference_gradient(purifier, x, y, rng):
    """Autograd through a plainly written loop, second order included (the specification)."""
    x = x.clone().requires_grad_(True)
    xk = purifier.step.start(x, generator=rng)
    for _ in range(purifier.steps):
        g, = torch.autograd.grad(purifier.objective(xk, generator=rng).sum(), xk, create_graph=True)
        xk = projection_step_reference(xk, g, x, purifier.step.step_size, purifier.step.eps, purifier.step.norm)
    return torch.autograd.grad(F.cross_entropy(purifier.classifier(xk), y, reduction="sum"), x)[0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("ops", ["reference", "library"])
def test_unrolled_gradient_equals_autograd_through_the_plain_loop(model, batch, norm, ops, monkeypatch):
    x, y = batch[0][:6], batch[1][:6]
    purifier = make_purifier(model, norm=norm)
    with monkeypatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(op_extension, "_C", None)  # the pure-PyTorch reference ops
        patch.setattr(op_extension, "_warned", True)  # (and no fallback warning, restored after)
        expected = unrolled_reference_gradient(purifier, x, y, counter(6))
    if ops == "reference":
        monkeypatch.setattr(op_extension, "_C", None)
        monkeypatch.setattr(op_extension, "_warned", True)
    purifier.objective = counting = CountingObjective(purifier.objective)
    unrolled, x_in = Unrolled(purifier, seed=5), x.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with unrolled.bind(counter(6)):
            logits = unrolled(x_in)
        got, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_in)
    # One L_s pass per step forward, one more per step in backward for L2 (recomputation).
    assert counting.calls == purifier.steps * (2 if norm == "l2" else 1)
    torch.testing.assert_close(logits.detach(), model(purifier.purify(x, generator=counter(6))))
    if any("no double backward" in str(w.message) for w in caught):
        assert norm == "l2" and ops == "library"
        pytest.xfail("the fused ops have no double backward: the L2 unrolled gradient omits second-order terms")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert got.abs().sum() > 0


def test_bpda_and_iterate_averaged_gradients(model, batch):
    x, y = batch[0][:6], batch[1][:6]
    purifier = make_purifier(model)
    iterates = []
    purified = purifier.purify(x, generator=counter(6), on_step=lambda k, xk: k and iterates.append(xk.clone()))
    z = model(purified)
    delta = torch.softmax(z, 1) - F.one_hot(y, 4)  # d CE / d logits at the defense's output

    def classifier_vjp(point):
        point = point.clone().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(model(point), point, delta)[0]

    for defended, expected in ((BPDA(purifier, seed=5), classifier_vjp(purified)),
                               (BPDAIterates(purifier, seed=5), sum(map(classifier_vjp, iterates)) / len(iterates))):
        x_in = x.clone().requires_grad_(True)
        with defended.bind(counter(6)):
            logits = defended(x_in)
        torch.testing.assert_close(logits.detach(), z)
        got, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_in)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_shared_draws_replay_the_defender_and_fresh_draws_change(model, batch):
    x = batch[0][:8]
    purifier = make_purifier(model)
    defender = model(purifier.purify(x, generator=counter(8)))
    shared, fresh = BPDA(purifier, seed=5), BPDA(purifier, randomness="fresh", seed=5)
    with shared.bind(counter(8)), torch.no_grad():
        assert torch.equal(shared(x), defender) and torch.equal(shared(x), defender)
    with fresh.bind(counter(8)), torch.no_grad():
        first, second = fresh(x), fresh(x)
    assert not torch.equal(first, second) and not torch.equal(first, defender)
    with fresh.bind(counter(8)), torch.no_grad():
        assert torch.equal(fresh(x), first)  # reproducible


def test_randomized_autoattack_with_eot_runs_on_the_defense(model, batch):
    pytest.importorskip("torchattacks", reason="optional extra: pip install --no-deps torchattacks==3.5.1")
    x, y = batch[0][:12], batch[1][:12]
    attack = build_attack("bpda-eot2-apgd", classifier=model, purifier=make_purifier(model), eps=EPS, seed=5)
    assert isinstance(attack, AutoAttack) and attack.version == "rand" and attack.eot == 2 and attack.adaptive
    attack.steps = 5
    x_adv = attack.perturb(x, y, generator=counter(12))
    assert_in_budget(x_adv, x, EPS, "linf")
    assert build_attack("apgd-eot", classifier=model, purifier=make_purifier(model), eps=EPS).eot == 20


# ---- checks -------------------------------------------------------------------------------

def test_warns_on_randomized_defense_without_eot(model):
    purifier = make_purifier(model)
    with pytest.warns(EvaluationWarning, match="no EOT"):
        PGD(BPDA(purifier, randomness="fresh"), eps=EPS, steps=1, eot=1)
    with pytest.warns(EvaluationWarning, match="no EOT"):
        build_attack("unrolled-eot1-pgd5", classifier=model, purifier=purifier, eps=EPS)
    with pytest.warns(EvaluationWarning, match="targets a Purifier directly"):
        PGD(purifier, eps=EPS, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        PGD(BPDA(purifier, randomness="fresh"), eps=EPS, steps=1, eot=4)
        build_attack("bpda-pgd5", classifier=model, purifier=purifier, eps=EPS)
        deterministic = make_purifier(model, random_start=False)
        deterministic.objective.views = None  # no random views either
        PGD(BPDA(deterministic, randomness="fresh"), eps=EPS, steps=1)


def test_gradient_attack_on_the_gradient_free_defense_is_refused(model):
    with pytest.raises(ValueError, match="BPDA, BPDAIterates or Unrolled"):
        PGD(DefendedModel(make_purifier(model)), eps=EPS, steps=1)


def test_warns_when_shared_draws_are_not_the_defenders(model, batch):
    x, y = batch[0][:4], batch[1][:4]
    attack = build_attack("bpda-pgd1", classifier=model, purifier=make_purifier(model), eps=EPS, seed=5)
    with pytest.warns(EvaluationWarning, match="not the defender's seed"):
        attack.perturb(x, y, generator=counter(4, seed=5).fork(1))


def test_check_gradients_warns_on_nan_and_vanishing_gradients(model, batch):
    x, y = batch[0][:4], batch[1][:4]

    class NaNGradient(nn.Module):
        def forward(self, z):
            return model(z) + (z * 0).sqrt().flatten(1).sum(1, keepdim=True)  # d sqrt(0) = inf, times 0

    with pytest.warns(EvaluationWarning, match="NaN"):
        assert check_gradients(NaNGradient(), x, y).nonfinite == 1.0
    with pytest.warns(EvaluationWarning, match="vanish"):
        assert check_gradients(make_purifier(model), x, y).zero == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        report = check_gradients(BPDA(make_purifier(model), seed=5), x, y, generator=counter(4))
    assert report.nonfinite == 0 and report.zero == 0 and report.mean_norm > 0


def test_compare_with_transfer_warns_when_adaptive_is_weaker():
    transfer = torch.tensor([True, False, False, False])
    with pytest.warns(EvaluationWarning, match="weaker than"):
        assert compare_with_transfer(torch.tensor([True, True, False, False]), transfer) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same shape"):
        compare_with_transfer(torch.ones(3, dtype=torch.bool), transfer)


# ---- suite ----------------------------------------------------------------------------------

SPECS = [
    # spec, class, adaptive, norm, eps, attributes (``model``: the defended model's class)
    ("fgsm", FGSM, False, "linf", EPS, {"steps": 1}),
    ("pgd50", PGD, False, "linf", EPS, {"steps": 50, "step_size": 2 / 255}),
    ("pgd200", PGD, False, "linf", EPS, {"steps": 200}),
    ("pgdl2-50", PGD, False, "l2", EPS_L2, {"steps": 50}),
    ("bim200", BIM, False, "linf", EPS, {"steps": 200}),
    ("cw200", PGD, False, "linf", EPS, {"steps": 200}),
    ("cwl2", None, False, "l2", EPS_L2, {}),
    ("deepfool", None, False, "l2", EPS_L2, {}),
    ("autoattack", AutoAttack, False, "linf", EPS, {"version": "standard"}),
    ("aware-pgd50@4", DefenseAwarePGD, True, "linf", EPS, {"lam": 4.0, "steps": 50}),
    ("aware-cw10@-0.5", DefenseAwarePGD, True, "linf", EPS, {"lam": -0.5}),
    ("bpda-pgd50", PGD, True, "linf", EPS, {"eot": 1, "keep_best": True, "model": BPDA}),
    ("bpda-eot-pgd50", PGD, True, "linf", EPS, {"eot": 20, "keep_best": False, "model": BPDA}),
    ("bpda-iterates-pgd50", PGD, True, "linf", EPS, {"eot": 1, "model": BPDAIterates}),
    ("unrolled-pgd50", PGD, True, "linf", EPS, {"eot": 1, "model": Unrolled}),
    ("unrolled-eot-pgd50", PGD, True, "linf", EPS, {"eot": 20, "model": Unrolled}),
    ("unrolled-eot4-pgd50", PGD, True, "linf", EPS, {"eot": 4, "model": Unrolled}),
    ("apgd-eot", AutoAttack, True, "linf", EPS, {"version": "rand", "eot": 20, "model": BPDA}),
    ("unrolled-apgd-eot", AutoAttack, True, "linf", EPS, {"version": "rand", "model": Unrolled}),
    ("transfer-pgd50", Transfer, True, "linf", EPS, {}),
]


@pytest.mark.parametrize("spec, cls, adaptive, norm, eps, attributes", SPECS)
def test_build_attack_parses_every_form(model, spec, cls, adaptive, norm, eps, attributes):
    attack = build_attack(spec.upper(), classifier=model, purifier=make_purifier(model), eps=EPS, eps_l2=EPS_L2)
    assert attack.name == spec and attack.adaptive is adaptive and attack.norm == norm
    assert attack.eps == pytest.approx(eps)
    if cls is not None:
        assert type(attack) is cls
    for key, value in attributes.items():
        if key == "model":
            assert type(attack.model) is value
            assert attack.model.randomness == ("fresh" if "eot" in spec else "shared")
        else:
            assert getattr(attack, key) == pytest.approx(value), key


def test_every_listed_example_builds(model):
    purifier = make_purifier(model)
    assert {spec for spec, *_ in SPECS} - {"aware-cw10@-0.5"} <= set(list_attacks())
    for spec in list_attacks():
        assert build_attack(spec, purifier=purifier, eps=EPS).name == spec


@pytest.mark.parametrize("spec, match", [
    ("pgd", "did you mean 'pgd50'"), ("bpda-pdg50", "unknown attack spec"), ("autoatack", "did you mean 'autoattack'"),
    ("pgd0", "steps must be >= 1"), ("aware-pgd50@x", "lambda must be a number"), ("aware-fgsm@1", "aware- takes"),
    ("transfer-bpda-pgd50", "transfer- takes a static spec"), ("", "non-empty"), ("unrolled-eot0-pgd5", "EOT count"),
])
def test_build_attack_errors(model, spec, match):
    with pytest.raises(ValueError, match=match):
        build_attack(spec, classifier=model, purifier=make_purifier(model), eps=EPS)


def test_adaptive_specs_need_the_purifier_and_suites_expand(model):
    with pytest.raises(ValueError, match="pass purifier="):
        build_attack("bpda-pgd50", classifier=model, eps=EPS)
    assert build_attack("pgd10", classifier=model, eps=EPS, norm="l2").norm == "l2"
    assert expand_specs("pgd50, adaptive,pgd50") == ["pgd50", *ADAPTIVE_SUITE]
    purifier = make_purifier(model)
    assert all(build_attack(s, purifier=purifier, eps=EPS).adaptive for s in ADAPTIVE_SUITE)
