"""The papers' settings as their published codes ran them (issue 21): eps bounds per norm and
eps_v = 2 eps with its step (Mao et al.), SOAP's beta scale, SOAP's Table 2 attacks, and the
options that give the codes' view sampler and LC crop."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cifar_zips import write_cifar_zips
from pyengine import Purifier, load_purifier
from pyengine.attacks import BIM, FGSM, DefenseAwarePGD, build_attack, expand_specs
from pyengine.attacks.paper import SOAP_TABLE2, CarliniWagnerL2, DeepFoolL2
from pyengine.cli import main
from pyengine.demo import CHECKPOINTS, STANDARD_CHECKPOINT
from pyengine.evaluation import EvalConfig
from pyengine.evaluation.api import follows_eps
from pyengine.models import ContrastiveHead
from pyengine.models.aux_heads import RotationHead
from pyengine.purify import ViewSampler, check_eps, reverse_settings, reverse_step_size
from pyengine.random import CounterRandom
from pyengine.soap import (ConsistencyObjective, MinAuxPurifier, aux_elements, beta_to_lam, make_objective,
                           soap_purifier)
from pyengine.soap.objectives import LC_CROP_CURRENT, LC_CROP_PAPER
from test_cli import _built_by
from test_soap import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: shared CPUs

SOAP_LC_CHECKPOINT = CHECKPOINTS / "cifar10_preact_resnet_tiny_soap_lc.safetensors"


class Linear(torch.nn.Module):
    """logits = W x + b: DeepFool's linearisation is exact, the minimal L2 attack is known."""

    def __init__(self, classes=3, dim=3 * 4 * 4):
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(dim, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def minimal_l2(model, x):
    """Per image: the L2 distance to the nearest boundary of the predicted class (no box)."""
    logits = model(x)
    pred = logits.argmax(1)
    w = model.fc.weight
    out = []
    for i in range(x.shape[0]):
        k = pred[i]
        gaps = [(logits[i, k] - logits[i, j]).item() / (w[k] - w[j]).norm().item()
                for j in range(logits.shape[1]) if j != k]
        out.append(min(gaps))
    return torch.tensor(out)


# ------------------------------------------------------------- eps bounds and eps_v (Mao et al.)

def test_eps_bounds_depend_on_the_norm():
    assert EvalConfig(attacks=["pgd200"], eps=256 / 255, norm="l2").eps == pytest.approx(256 / 255)
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\] for norm 'linf'"):
        EvalConfig(attacks=["pgd200"], eps=256 / 255)
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 64\] for norm 'l2'"):
        EvalConfig(attacks=["pgd200"], eps=65.0, norm="l2")
    with pytest.raises(ValueError, match="norm must be one of"):
        EvalConfig(attacks=["pgd200"], norm="l1")
    with pytest.raises(ValueError, match="eps_v must lie"):
        check_eps(0.0, "linf", "eps_v")


def test_eps_v_follows_two_eps_with_the_step_rule():
    assert reverse_settings(8 / 255) == pytest.approx({"norm": "linf", "eps": 16 / 255, "step_size": 2 / 255})
    assert reverse_settings(4 / 255)["eps"] == pytest.approx(8 / 255)
    assert reverse_settings(4 / 255)["step_size"] == pytest.approx(1 / 255)
    # Table 5: L2 256/255, reversed in L2 at 512/255 with the code's 2/255 step.
    table5 = reverse_settings(256 / 255, "l2")
    assert table5 == pytest.approx({"norm": "l2", "eps": 512 / 255, "step_size": 2 / 255})
    # An explicit eps_v wins; its step still follows it.
    assert reverse_settings(8 / 255, eps_v=24 / 255)["step_size"] == pytest.approx(3 / 255)
    assert reverse_step_size(16 / 255) == pytest.approx(2 / 255)
    assert reverse_settings(0.9)["eps"] == 1.0  # 2 eps capped at the L-inf cube


def test_table5_purifier_reverses_in_l2_within_eps_v():
    model = tiny_model()
    purifier = Purifier(model, ContrastiveHead(model.num_features, 16, 8), steps=2, negatives="batch",
                        **reverse_settings(256 / 255, "l2"))
    x = torch.rand(3, 3, 32, 32)
    out = purifier.purify(x, generator=CounterRandom(0, torch.arange(3)))
    assert (out - x).flatten(1).norm(dim=1).max() <= 512 / 255 + 1e-4
    assert (out - x).abs().max() > 16 / 255  # an L-inf 16/255 purifier could not move a pixel this far
    config = EvalConfig(attacks=["pgd200"], eps=256 / 255, norm="l2")
    assert follows_eps(purifier, config)
    assert not follows_eps(purifier, EvalConfig(attacks=["pgd200"], eps=128 / 255, norm="l2"))


# ------------------------------------------------------------------------------ SOAP's beta

def test_beta_converts_to_lam_on_the_projects_scale():
    assert beta_to_lam(1.0, "rotation") == 6.25
    assert beta_to_lam(1.0, "consistency") == 10.0
    assert beta_to_lam(0.5, "consistency", n_classes=100) == 0.5
    assert beta_to_lam(1.0, "reconstruction", image_shape=(1, 28, 28)) == pytest.approx(100 / 784)
    assert aux_elements("rotation") == 16
    with pytest.raises(ValueError, match="task must be one of"):
        beta_to_lam(1.0, "contrastive")
    with pytest.raises(ValueError, match="beta must be a finite number"):
        beta_to_lam(float("nan"), "rotation")


@pytest.mark.parametrize("task", ["rotation", "consistency"])
def test_beta_gives_the_published_attacks_gradient_direction(task):
    """SOAP's second_order: CE(mean) - 100 beta L_aux(mean over elements), as its code."""
    model = tiny_model(torch.float64)
    head = RotationHead(model.num_features).double().eval() if task == "rotation" else None
    objective = make_objective(task, model, head)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 5, 9])
    beta = 0.7
    if task == "rotation":
        copies = torch.cat([torch.rot90(x, -k, (2, 3)) for k in range(4)])
        probs = torch.softmax(head(model.forward_features(copies)), 1)
        target = F.one_hot(torch.arange(4).repeat_interleave(4), 4).double()
        aux = F.mse_loss(probs, target)
    else:
        view = F.interpolate(x.flip(3)[:, :, 4:28, 4:28], [32, 32])
        aux = F.mse_loss(model(x), model(view))
    published, = torch.autograd.grad(F.cross_entropy(model(x), y) - 100 * beta * aux, x)
    attack = DefenseAwarePGD(model, objective, beta=beta, eps=8 / 255, steps=1)
    attack._aux = None  # set by _run; these objectives draw no randomness
    ours, _ = attack._gradient(x.detach(), y, None)
    assert attack.lam == pytest.approx(beta_to_lam(beta, task))
    torch.testing.assert_close(ours / len(y), published)


def test_beta_spec_and_its_errors():
    model = tiny_model()
    purifier = soap_purifier(model, ConsistencyObjective(model), eps=4 / 255, steps=1)
    attack = build_attack("aware-bim20@beta=0.5", purifier=purifier, eps=8 / 255)
    assert attack.beta == 0.5 and attack.steps == 20 and not attack.rule.random_start
    attack.perturb(torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), generator=CounterRandom(0, torch.arange(2)))
    assert attack.lam == pytest.approx(5.0)
    contrastive = Purifier(model, ContrastiveHead(model.num_features, 16, 8), steps=1, negatives="batch")
    with pytest.raises(ValueError, match="beta= is SOAP's scale"):
        build_attack("aware-pgd10@beta=1", purifier=contrastive, eps=8 / 255)
    with pytest.raises(ValueError, match="exactly one"):
        DefenseAwarePGD(model, ConsistencyObjective(model), 1.0, beta=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        DefenseAwarePGD(model, ConsistencyObjective(model))


# ------------------------------------------------------------------ SOAP's Table 2 attacks

def test_soap_table2_attacks_carry_the_papers_settings():
    model = Linear()
    assert expand_specs("clean,soap-table2") == ["clean", *SOAP_TABLE2]
    # The paper's budgets, whatever the run's eps and norm.
    pgd = build_attack("soap-pgd20", classifier=model, eps=4 / 255, norm="l2")
    assert isinstance(pgd, BIM) and pgd.steps == 20 and not pgd.rule.random_start
    assert (pgd.eps, pgd.norm, pgd.step_size) == (pytest.approx(8 / 255), "linf", pytest.approx(2 / 255))
    fgsm = build_attack("soap-fgsm", classifier=model, eps=4 / 255)
    assert isinstance(fgsm, FGSM) and fgsm.eps == pytest.approx(8 / 255)
    cw = build_attack("soap-cw", classifier=model, eps=8 / 255)
    assert isinstance(cw, CarliniWagnerL2) and (cw.eps, cw.norm) == (2.0, "l2")
    assert (cw.confidence, cw.c_init, cw.search_steps, cw.max_steps, cw.lr) == (0.0, 1e-3, 5, 500, 1e-2)
    df = build_attack("soap-deepfool", classifier=model, eps=8 / 255)
    assert isinstance(df, DeepFoolL2) and (df.eps, df.steps, df.overshoot) == (2.0, 50, 0.02)


def test_deepfool_reaches_the_linear_boundary_from_the_prediction():
    model = Linear()
    x = 0.4 + 0.2 * torch.rand(6, 3, 4, 4)
    pred = model(x).argmax(1)
    attack = DeepFoolL2(model, eps=50.0)
    wrong = (pred + 1) % 3  # the label is not used: the code attacks the prediction
    x_adv = attack.perturb(x, wrong, generator=CounterRandom(0, torch.arange(6)))
    assert torch.equal(x_adv, attack.perturb(x, pred, generator=CounterRandom(0, torch.arange(6))))
    assert (model(x_adv).argmax(1) != pred).all()
    # One exact linear step of (distance + 1e-4), times 1 + overshoot.
    torch.testing.assert_close((x_adv - x).flatten(1).norm(dim=1), 1.02 * (minimal_l2(model, x) + 1e-4),
                               rtol=1e-4, atol=1e-5)


def test_carlini_wagner_finds_a_near_minimal_example_and_projects():
    model = Linear()
    x = 0.4 + 0.2 * torch.rand(6, 3, 4, 4)
    y = model(x).argmax(1)
    attack = CarliniWagnerL2(model, eps=50.0, max_steps=200)
    x_adv = attack.perturb(x, y, generator=CounterRandom(0, torch.arange(6)))
    distance = (x_adv - x).flatten(1).norm(dim=1)
    assert (model(x_adv).argmax(1) != y).all()
    assert (distance <= 1.25 * minimal_l2(model, x) + 1e-3).all()
    small = CarliniWagnerL2(model, eps=0.5 * float(distance.min()), max_steps=200)
    projected = small.perturb(x, y, generator=CounterRandom(0, torch.arange(6)))
    assert (projected - x).flatten(1).norm(dim=1).max() <= small.eps + 1e-5
    with pytest.raises(ValueError, match="c_init"):
        CarliniWagnerL2(model, c_init=0.0)


# ------------------------------------------------------ the codes' views and LC crop, as options

def test_published_view_sampler_and_default_repr():
    published = ViewSampler.published()
    assert (published.jitter_p, published.shared_across_batch, published.n_views) == (1.0, True, 4)
    assert ViewSampler().jitter_p == 0.8
    model = tiny_model()
    head = ContrastiveHead(model.num_features, 16, 8)
    default = Purifier(model, head, negatives="batch")
    assert "views=" not in default.extra_repr()  # recorded runs keep their digest
    assert "jitter_p=1.0" in Purifier(model, head, negatives="batch", views=published).extra_repr()


def test_lc_crop_defaults_to_the_published_paper_and_offers_the_current_code():
    model = tiny_model(torch.float64)
    assert ConsistencyObjective(model).crop_fraction == LC_CROP_PAPER == 0.75
    current = make_objective("consistency", model, lc_crop=LC_CROP_CURRENT)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    view = F.interpolate(x.flip(3)[:, :, 2:30, 2:30], [32, 32])  # r_h, r_w, h, w = 2, 2, 28, 28
    torch.testing.assert_close(current.fixed_view(x), view)
    assert "lc_crop=0.875" in MinAuxPurifier(model, current, n_radii=2, steps=1).extra_repr()
    assert "lc_crop" not in MinAuxPurifier(model, ConsistencyObjective(model), n_radii=2, steps=1).extra_repr()
    with pytest.raises(ValueError, match="lc_crop"):
        make_objective("rotation", model, RotationHead(model.num_features).double(), lc_crop=0.875)
    assert math.isclose(LC_CROP_CURRENT * 32, 28)


# ----------------------------------------------------------- the factory and the command line

def test_the_factory_reverses_in_the_attacks_norm_at_twice_its_eps():
    table5 = load_purifier(STANDARD_CHECKPOINT, attack_eps=256 / 255, attack_norm="l2").step
    assert (table5.norm, table5.eps, table5.step_size) == ("l2", pytest.approx(512 / 255), pytest.approx(2 / 255))
    half = load_purifier(STANDARD_CHECKPOINT, attack_eps=4 / 255).step
    assert (half.norm, half.eps, half.step_size) == ("linf", pytest.approx(8 / 255), pytest.approx(1 / 255))
    given = load_purifier(STANDARD_CHECKPOINT, attack_eps=4 / 255, eps_v=24 / 255).step
    assert (given.eps, given.step_size) == (pytest.approx(24 / 255), pytest.approx(3 / 255))
    with pytest.raises(ValueError, match="lc_crop"):
        load_purifier(STANDARD_CHECKPOINT, lc_crop=LC_CROP_CURRENT)
    soap = load_purifier(SOAP_LC_CHECKPOINT, attack_eps=256 / 255, attack_norm="l2", lc_crop=LC_CROP_CURRENT)
    assert soap.objective.crop_fraction == LC_CROP_CURRENT and soap.step.norm == "linf"  # SOAP's code: L-inf always


def test_eval_and_demo_follow_eps_and_eval_takes_table5(monkeypatch, tmp_path):
    from pyengine import demo, evaluation

    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    common = ["--checkpoint", STANDARD_CHECKPOINT, "--data", data]
    l2 = _built_by(["eval", *common, "--out", tmp_path / "e", "--norm", "l2", "--eps", "256/255"], monkeypatch,
                   evaluation, "evaluate")
    assert (l2.step.norm, l2.step.eps, l2.step.step_size) == ("l2", pytest.approx(512 / 255), pytest.approx(2 / 255))
    shown = _built_by(["demo", *common, "--eps", "4/255"], monkeypatch, demo, "run_demo")
    assert shown.step.eps == pytest.approx(8 / 255)
    fixed = _built_by(["eval", *common, "--out", tmp_path / "f", "--eps", "4/255", "--eps-v", "16/255"], monkeypatch,
                      evaluation, "evaluate")
    assert fixed.step.eps == pytest.approx(16 / 255) and fixed.step.step_size == pytest.approx(2 / 255)


def test_eval_refuses_an_eps_beyond_its_norms_bound(tmp_path, capsys):
    assert main(["eval", "--eps", "256/255", "--out", str(tmp_path / "e")]) == 2
    assert "eps must lie in (0, 1] for norm 'linf'" in capsys.readouterr().err


def test_results_print_soaps_numbers_beside_the_attack_it_ran(tmp_path):
    from pyengine.evaluation.paper import results_markdown

    def summary(attacks):
        rows = {name: {"adaptive": False, "standard": 0.0, "purified": 1 / 3, "oracle": 2 / 3}
                for name in ["clean", *attacks]}
        return {"images": 3, "model": {"architecture": "tiny", "path": "x"}, "config": {"purifier": "MinAux"},
                "attacks": rows, "worst_case": {"standard": 0.0, "purified_static": 0.0, "purified_all": 0.0}}

    for name, attacks in (("soap_lc", ["pgd50"]), ("soap_lc_paper", list(SOAP_TABLE2))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(summary(attacks)))
    text = results_markdown(tmp_path, "a test machine")
    assert "| soap-pgd20 | static | 0.00 | 33.33 | 66.67 | 0.15 | 51.42 | 62.29 |" in text
    assert "| soap-deepfool | static | 0.00 | 33.33 | 66.67 | 8.52 | 74.79 | 88.88 |" in text
    assert "| pgd50 | static | 0.00 | 33.33 | 66.67 | — | — | — |" in text  # not the paper's PGD
