"""Registered architectures (parametrized over list_models()) and HookedFeatures on user models."""
from __future__ import annotations

import threading
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyengine.models import (ContrastiveHead, HookedFeatures, create_model, list_models,
                             model_config)


def _input_shape(name: str) -> tuple[int, ...]:
    """[N, C, H, W] for a quick check. The WRNs (~40M parameters, 5 GFLOPs per 32x32 image) get one
    8x8 image: every layer still runs (the last stage sees 2x2), as they are convolutional up to
    the global pooling."""
    c, h, w = model_config(name).input_size
    return (1, c, h // 4, w // 4) if name.startswith("wide_resnet") else (2, c, h, w)


@pytest.mark.parametrize("name", list_models())
def test_registered_model(name):
    torch.manual_seed(0)
    cfg = model_config(name)
    model = create_model(name).eval()
    assert model.model_name == name and model.num_features == cfg.num_features
    shape = _input_shape(name)
    n = shape[0]
    x = torch.rand(shape, requires_grad=True)
    features = model.forward_features(x)
    logits = model.forward_head(features)
    assert features.shape == (n, cfg.num_features)
    assert logits.shape == (n, 10)
    head = ContrastiveHead(cfg.num_features, cfg.head_hidden, cfg.head_out).eval()
    assert head(features).shape == (n, cfg.head_out)
    (grad,) = torch.autograd.grad(logits[:, 0].sum() + features.square().sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    if "cpu" in cfg.tags:  # forward is forward_head after forward_features; one more pass is cheap here
        with torch.no_grad():
            assert torch.allclose(model(x), logits, atol=1e-5)


def test_create_model_options():
    model = create_model("preact_resnet_tiny", num_classes=7, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert model.fc.out_features == 7
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.25] * 3
    x = torch.full((1, 3, 32, 32), 0.75)
    assert torch.allclose(model.normalize(x), torch.ones_like(x))


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'preact_resnet81'.*did you mean preact_resnet18"):
        create_model("preact_resnet81")
    with pytest.raises(ValueError, match="did you mean wide_resnet28_10"):
        model_config("wide_resnet28")


def test_list_models_pattern():
    assert list_models("wide*") == ["wide_resnet28_10", "wide_resnet34_10"]
    assert set(list_models("preact*")) >= {"preact_resnet18", "preact_resnet_tiny"}
    assert list_models("nothing*") == []
    assert list_models() == sorted(list_models())


# --- HookedFeatures ---------------------------------------------------------------------------

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _user_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(inplace=True),
        conv2=nn.Conv2d(8, 16, 3, stride=2, padding=1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 10),
    )).eval()


def _normalized(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_hooked_user_cnn_reads_the_layer_before_inplace_relu():
    model = _user_cnn()
    wrapped = HookedFeatures(model, "bn1", mean=MEAN, std=STD)
    assert wrapped.num_features is None
    x = torch.rand(4, 3, 16, 16)
    features = wrapped.forward_features(x)
    expected = model.bn1(model.conv1(_normalized(x))).mean(dim=(2, 3))
    # relu1 is in place: without a copy at capture time the features would be clamped at 0
    assert expected.min() < 0
    assert features.shape == (4, 8) and wrapped.num_features == 8
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.allclose(wrapped(x), model(_normalized(x)), atol=1e-6)
    assert len(model.bn1._forward_hooks) == 0  # nothing stays registered between calls


def test_hooked_flattens_non_map_outputs():
    model = _user_cnn()
    wrapped = HookedFeatures(model, "flatten")
    x = torch.rand(3, 3, 8, 8)
    expected = model.flatten(model.pool(model.relu2(model.conv2(F.relu(model.bn1(model.conv1(x)))))))
    assert torch.allclose(wrapped.forward_features(x), expected, atol=1e-6)
    assert wrapped.num_features == 16
    assert torch.allclose(HookedFeatures(model, "fc").forward_features(x), model(x), atol=1e-6)


def test_hooked_gradient_flows_to_input():
    model = _user_cnn()
    wrapped = HookedFeatures(model, "relu2", mean=MEAN, std=STD)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(wrapped.forward_features(x).square().sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    h = model.relu2(model.conv2(F.relu(model.bn1(model.conv1(_normalized(x_ref))))))
    (grad_ref,) = torch.autograd.grad(h.mean(dim=(2, 3)).square().sum(), x_ref)
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, grad_ref, atol=1e-6)


def test_hooked_registered_model_matches_hand_computation():
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny").eval()
    wrapped = HookedFeatures(model, "bn")  # normalisation is inside registered models
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.bn(model.layers(model.conv1(model.normalize(x)))).mean(dim=(2, 3))
        assert torch.allclose(wrapped.forward_features(x), expected, atol=1e-5)
        assert torch.equal(wrapped(x), model(x))
        block = HookedFeatures(model, "layers.1.conv2").forward_features(x)
    assert wrapped.num_features == model_config("preact_resnet_tiny").num_features
    assert block.shape == (2, 64)


def test_hooked_unknown_layer():
    model = _user_cnn()
    with pytest.raises(ValueError, match=r"unknown layer 'bn_1'; did you mean 'bn1'.*has 9 named modules"):
        HookedFeatures(model, "bn_1")
    with pytest.raises(ValueError, match="unknown layer 'zzzz' \\(Sequential has 9"):
        HookedFeatures(model, "zzzz")
    with pytest.raises(TypeError, match="layer must be a str"):
        HookedFeatures(model, 1)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        HookedFeatures(lambda x: x, "bn1")


def test_hooked_argument_checks():
    model = _user_cnn()
    with pytest.raises(ValueError, match="both mean and std"):
        HookedFeatures(model, "bn1", mean=MEAN)
    with pytest.raises(ValueError, match="one value per channel"):
        HookedFeatures(model, "bn1", mean=MEAN, std=(0.2, 0.2))
    with pytest.raises(ValueError, match="std must be > 0"):
        HookedFeatures(model, "bn1", mean=MEAN, std=(0.2, 0.0, 0.2))
    wrapped = HookedFeatures(model, "bn1", mean=MEAN, std=STD)
    with pytest.raises(ValueError, match=r"x must be \[N, 3, H, W\].*got \[2, 1, 8, 8\]"):
        wrapped.forward_features(torch.rand(2, 1, 8, 8))
    with pytest.raises(RuntimeError):  # the model itself rejects the input; the hook must not stay
        HookedFeatures(model, "bn1").forward_features(torch.rand(2, 5, 8, 8))
    assert len(model.bn1._forward_hooks) == 0
    with pytest.raises(NotImplementedError, match="call forward"):
        wrapped.forward_head(torch.rand(2, 8))


def test_hooked_layer_that_never_runs():
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.spare = _user_cnn(), nn.Linear(2, 2)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(RuntimeError, match="layer 'spare' did not run"):
        HookedFeatures(WithSpare(), "spare").forward_features(torch.rand(1, 3, 8, 8))


class _Rendezvous(nn.Module):
    """Holds every forward pass until two threads are inside the model at once."""

    def __init__(self):
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=10)

    def forward(self, x):
        self.barrier.wait()
        return x


def test_hooked_concurrent_threads_keep_their_own_features():
    model = _user_cnn()
    model.relu1 = nn.Sequential(nn.ReLU(), _Rendezvous())  # both threads pass bn1, then meet
    wrapped = HookedFeatures(model, "bn1")
    inputs = [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8) + 1]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            x = inputs[i].clone().requires_grad_(True)
            features = wrapped.forward_features(x)
            features.sum().backward()
            results[i] = features.detach()
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    with torch.no_grad():
        for i, x in enumerate(inputs):
            assert torch.allclose(results[i], model.bn1(model.conv1(x)).mean(dim=(2, 3)), atol=1e-6)


def test_airbench_stem_whitens_the_patches_it_was_initialised_on():
    torch.manual_seed(0)
    model = create_model("airbench94")
    images = torch.rand(64, 3, 32, 32) ** 2  # skewed pixels: a non-trivial covariance
    images[:, 1] = 0.5 * images[:, 0] + 0.5 * images[:, 1]  # correlated channels
    model.init_from_data(images)
    half = model.whiten_weight.shape[0] // 2
    assert torch.equal(model.whiten_weight[half:], -model.whiten_weight[:half])
    out = F.conv2d(model.normalize(images), model.whiten_weight[:half])
    flat = out.permute(0, 2, 3, 1).reshape(-1, half)
    covariance = flat.T @ flat / len(flat)
    torch.testing.assert_close(covariance, torch.eye(half), atol=2e-2, rtol=0)
    assert not model.whiten_weight.requires_grad and "whiten_weight" in model.state_dict()
