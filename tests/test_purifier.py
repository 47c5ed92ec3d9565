"""The Purifier (Algorithm 1): constraints, determinism, frozen models and input checks."""
import math

import pytest
import torch

from pyengine import Purifier, create_model
from pyengine.models import ContrastiveHead
from pyengine.purify import ProjectedStep


def make_purifier(**kwargs):
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    head = ContrastiveHead(model.num_features, 16, 8)
    kwargs.setdefault("bank", torch.randn(32, 8))
    return Purifier(model, head, **kwargs)


@pytest.mark.parametrize("case", range(8))
def test_purified_images_stay_in_the_ball_and_the_box(case):
    rng = torch.Generator().manual_seed(case)
    norm = "linf" if case % 2 == 0 else "l2"
    eps = float(torch.empty(1).uniform_(0.01, 0.1, generator=rng)) * (1 if norm == "linf" else 20)
    n, size = int(torch.randint(1, 4, (1,), generator=rng)), int(torch.randint(8, 20, (1,), generator=rng))
    purifier = make_purifier(steps=3, eps=eps, step_size=eps / 2, norm=norm, n_views=2 + case % 3)
    x = torch.rand(n, 3, size, size, generator=rng)
    x[0, 0, 0, 0], x[-1, -1, -1, -1] = 0.0, 1.0  # pixels at the box edges must stay inside
    out = purifier.purify(x, generator=rng)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    dist = (out - x).flatten(1).abs().amax(1) if norm == "linf" else (out - x).flatten(1).norm(dim=1)
    assert (dist <= eps * (1 + 1e-5) + 1e-6).all()
    assert (dist > 0).all()


def test_same_seed_same_result_and_trace_shape():
    purifier = make_purifier(steps=4)
    x = torch.rand(3, 3, 16, 16)
    a = purifier.purify(x, generator=torch.Generator().manual_seed(7), return_trace=True)
    b = purifier.purify(x, generator=torch.Generator().manual_seed(7), return_trace=True)
    c = purifier.purify(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.images, b.images) and torch.equal(a.loss_trace, b.loss_trace)
    assert not torch.equal(a.images, c)
    assert a.loss_trace.shape == (5, 3)
    seeded = make_purifier(steps=2, seed=11)
    assert torch.equal(seeded.purify(x), seeded.purify(x))


def test_batch_of_one_and_forward_gives_logits_without_weight_gradients():
    purifier = make_purifier(steps=2)
    logits = purifier(torch.rand(1, 3, 32, 32))
    assert logits.shape == (1, 10)
    assert all(p.grad is None and not p.requires_grad for p in purifier.parameters())
    purifier.train()
    assert not purifier.classifier.training and not purifier.objective.head.training


def test_zero_steps_without_random_start_is_the_identity():
    purifier = make_purifier(steps=0, random_start=False)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(purifier.purify(x), x)


BAD_INPUTS = [
    (lambda: [[0.0]], TypeError, "must be a torch.Tensor"),
    (lambda: torch.rand(3, 32, 32), ValueError, "4-D"),
    (lambda: torch.rand(2, 1, 32, 32), ValueError, "3 channels"),
    (lambda: (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), TypeError, "floating-point"),
    (lambda: torch.rand(2, 3, 32, 32) * 2, ValueError, r"\[0, 1\]"),
    (lambda: torch.rand(2, 3, 32, 32) - 0.5, ValueError, r"\[0, 1\]"),
    (lambda: torch.full((1, 3, 32, 32), math.nan), ValueError, "NaN"),
    (lambda: torch.full((1, 3, 32, 32), math.inf), ValueError, "NaN or inf"),
    (lambda: torch.rand(0, 3, 32, 32), ValueError, "empty batch"),
    (lambda: torch.rand(1, 3, 32, 32, device="meta"), ValueError, "classifier is on cpu"),
]


@pytest.mark.parametrize("make_x, error, match", BAD_INPUTS)
def test_bad_inputs_raise(make_x, error, match):
    purifier = make_purifier(steps=1)
    with pytest.raises(error, match=match):
        purifier.purify(make_x())


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=-1), "steps"), (dict(steps=2.5), "steps"), (dict(eps=0.0), "eps"), (dict(eps=2.0), "eps"),
    (dict(step_size=0.0), "step_size"), (dict(step_size=1.0), "step_size"), (dict(norm="l1"), "norm"),
    (dict(n_views=1), "n_views"), (dict(temperature=-1.0), "temperature"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_purifier(**kwargs)


def test_mismatched_head_and_devices_raise():
    model = create_model("preact_resnet_tiny")
    with pytest.raises(ValueError, match="head expects 512"):
        Purifier(model, ContrastiveHead(512, 128, 8))
    with pytest.raises(ValueError, match="different devices"):
        Purifier(model, ContrastiveHead(128, 16, 8).to("meta"))
    with pytest.raises(ValueError, match="needs a contrastive head"):
        Purifier(model)


def test_custom_step_rule_is_used():
    step = ProjectedStep(4 / 255, 1 / 255, random_start=False)
    purifier = make_purifier(steps=3, step=step)
    x = torch.rand(2, 3, 16, 16)
    assert (purifier.purify(x) - x).abs().max() <= 3 / 255 + 1e-6
