"""The view sampler: parameter draws, seeding, and gradients to the input."""
import pytest
import torch

from pyengine.ops import view_sampling as vs
from pyengine.purify import ViewSampler


def test_draws_follow_the_configured_distributions():
    sampler = ViewSampler(n_views=4)
    params = sampler.draw(2000, 32, 32, generator=torch.Generator().manual_seed(0))
    assert params.shape == (8000, vs.NUM_VIEW_PARAMS)
    area = params[:, vs.CROP_HEIGHT] * params[:, vs.CROP_WIDTH]
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert (params[:, vs.CROP_TOP] + params[:, vs.CROP_HEIGHT] <= 1 + 1e-6).all()
    assert (params[:, vs.CROP_LEFT] + params[:, vs.CROP_WIDTH] <= 1 + 1e-6).all()
    ratio = params[:, vs.CROP_WIDTH] / params[:, vs.CROP_HEIGHT]
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert abs(params[:, vs.FLIP].mean().item() - 0.5) < 0.03
    assert abs(params[:, vs.GRAYSCALE].mean().item() - 0.2) < 0.03
    jittered = (params[:, vs.BRIGHTNESS] != 1).float().mean().item()
    assert abs(jittered - 0.8) < 0.03
    assert params[:, vs.HUE].abs().max() <= 0.2
    assert params[:, vs.BRIGHTNESS].min() >= 0.2 and params[:, vs.BRIGHTNESS].max() <= 1.8


def test_shared_mode_repeats_one_draw_per_view_across_the_batch():
    params = ViewSampler(n_views=3, shared_across_batch=True).draw(5, 32, 32, generator=torch.Generator().manual_seed(1))
    assert params.shape == (15, vs.NUM_VIEW_PARAMS)
    for v in range(3):
        assert (params[v * 5:(v + 1) * 5] == params[v * 5]).all()
    assert not torch.equal(params[0], params[5])


def test_same_generator_seed_same_views_and_different_seed_different_views():
    x = torch.rand(2, 3, 16, 16)
    sampler = ViewSampler()
    a = sampler(x, generator=torch.Generator().manual_seed(3))
    b = sampler(x, generator=torch.Generator().manual_seed(3))
    c = sampler(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == (8, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_gradients_reach_the_input_through_the_views():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    views = ViewSampler()(x, generator=torch.Generator().manual_seed(0))
    (views * torch.randn_like(views)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()


def test_identity_params_reproduce_the_input_and_crop_flip_is_exact():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    params = vs.identity_view_params(2).double()
    torch.testing.assert_close(vs.sample_views_reference(x, params, 8, 8), x)
    params[:, vs.FLIP] = 1
    torch.testing.assert_close(vs.sample_views_reference(x, params, 8, 8), x.flip(-1))
    # The left half, resized from 4 to 4 columns, is an exact copy of those columns.
    params = vs.identity_view_params(2).double()
    params[:, vs.CROP_WIDTH] = 0.5
    torch.testing.assert_close(vs.sample_views_reference(x, params, 8, 4), x[..., :4])


@pytest.mark.parametrize("bad", [dict(n_views=1), dict(scale=(0.5, 0.2)), dict(ratio=(0, 1)), dict(hue=0.7)])
def test_bad_settings_raise(bad):
    with pytest.raises(ValueError):
        ViewSampler(**bad)
