"""Images beyond CIFAR's 32 px: the fused ops against their references at 64, 96 and 224 px,
and the whole purify loop on a ResNet-sized input (the fused path against the reference ops)."""
import importlib

import pytest
import torch

from pyengine import Purifier
from pyengine.models import ContrastiveHead, create_model
from pyengine.ops import extension_loaded, projection_step_reference, sample_views_reference
from pyengine.purify import ViewSampler

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="pyengine._C is not built: no fused ops")

# (N, V, H, W): square sizes users bring, and one non-square 224-wide image.
SIZES = [(2, 2, 64, 64), (1, 4, 96, 96), (1, 2, 224, 224), (1, 2, 160, 224)]


def views_and_params(n, v, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g, dtype=dtype)
    return x, ViewSampler(n_views=max(v, 2)).draw(n, h, w, generator=g)[: n * v]


@pytest.mark.parametrize("size", SIZES)
def test_sample_views_forward_and_backward_match_the_reference(size):
    n, v, h, w = size
    x, params = views_and_params(n, v, h, w)
    x.requires_grad_()
    got = torch.ops.pyengine.sample_views(x, params, h, w, None, False)
    want = sample_views_reference(x, params, h, w)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    upstream = torch.randn_like(want)
    g_got, = torch.autograd.grad(got, x, upstream)
    g_want, = torch.autograd.grad(want, x, upstream)
    # fp32 sums over ~(H/h_crop)^2 source pixels per output pixel in another order; a few
    # entries also sit on the hue clamp's boundary (see test_op_sample_views.assert_grads_close).
    bad = (g_got - g_want).abs() > 1e-4 + 1e-4 * g_want.abs()
    assert bad.float().mean() < 2e-3, f"{int(bad.sum())} of {bad.numel()} gradient entries differ"


@pytest.mark.parametrize("size", [(2, 64, 64), (1, 224, 224)])
def test_sample_views_float64_backward_at_size(size):
    n, h, w = size
    x, params = views_and_params(n, 2, h, w, torch.float64)
    x.requires_grad_()
    upstream = torch.randn(n * 2, 3, h, w, dtype=torch.float64)
    g_got, = torch.autograd.grad(torch.ops.pyengine.sample_views(x, params, h, w, None, False), x, upstream)
    g_want, = torch.autograd.grad(sample_views_reference(x, params, h, w), x, upstream)
    torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("hw", [64, 96, 224])
def test_projection_step_matches_the_reference(hw, norm):
    g = torch.Generator().manual_seed(hw)
    x0 = torch.rand(2, 3, hw, hw, generator=g)
    x = (x0 + 0.05 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    grad = torch.randn(x0.shape, generator=g)
    step, eps = (2 / 255, 16 / 255) if norm == "linf" else (0.5, 2.0)
    got = torch.ops.pyengine.projection_step(x, grad, x0, step, eps, norm)
    tol = dict(atol=0, rtol=0) if norm == "linf" else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got, projection_step_reference(x, grad, x0, step, eps, norm), **tol)


@pytest.mark.parametrize("hw", [64, 96])
def test_purify_loop_fused_matches_reference_ops(hw, monkeypatch):
    """K = 3 steps of the whole loop on a PreAct-ResNet-18 (a ResNet-sized network; random
    weights) at ``hw`` px: the fused ops and the pure-PyTorch references give the same iterates
    (up to the sign of near-zero gradients, one step apart)."""
    torch.manual_seed(0)
    model = create_model("preact_resnet18_half")
    head = ContrastiveHead(model.num_features, 128, 8)
    purifier = Purifier(model, head, bank=torch.randn(32, 8), steps=3, precision="fp32", channels_last=False,
                        image_size=(hw, hw))
    x = torch.rand(1, 3, hw, hw, generator=torch.Generator().manual_seed(1))
    fused = purifier.purify(x, generator=torch.Generator().manual_seed(2), return_trace=True)
    for name in ("contrastive_loss", "view_sampling", "projection_step"):
        monkeypatch.setattr(importlib.import_module(f"pyengine.ops.{name}"), "use_fused", lambda *t: False)
    reference = purifier.purify(x, generator=torch.Generator().manual_seed(2), return_trace=True)
    differ = (fused.images - reference.images).abs() > 1e-5
    assert differ.float().mean() < 1e-3, f"{int(differ.sum())} of {differ.numel()} pixels differ"
    torch.testing.assert_close(fused.loss_trace, reference.loss_trace, atol=1e-3, rtol=1e-4)
