"""Per-image early exit: off or at tolerance 0 it is the full loop; a stopped image keeps the
iterate the full loop had at that step; the rule, its checks and the trace's shape."""
import pytest
import torch

from pyengine import EarlyExit, Purifier, create_model
from pyengine.models import ContrastiveHead

STEPS, EPS = 6, 16 / 255


def make(early_exit=None, negatives="bank"):
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    return Purifier(model, ContrastiveHead(model.num_features, 16, 8), bank=torch.randn(32, 8), steps=STEPS,
                    precision="fp32", negatives=negatives, early_exit=early_exit)


def run(purifier, x, **kwargs):
    return purifier.purify(x, generator=torch.Generator().manual_seed(3), return_trace=True, **kwargs)


X = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_tolerance_zero_is_the_full_loop():
    full, zero = run(make(), X), run(make(EarlyExit(0.0, window=1)), X)
    assert torch.equal(zero.images, full.images) and torch.equal(zero.loss_trace, full.loss_trace)
    assert zero.steps_taken.tolist() == full.steps_taken.tolist() == [STEPS] * 5


def test_a_huge_tolerance_stops_every_image_after_the_window():
    result = run(make(EarlyExit(1e9, window=2)), X)
    assert result.steps_taken.tolist() == [3] * 5
    assert result.loss_trace.shape == (STEPS + 1, 5)
    # A stopped image's trace repeats its last measured loss until the final evaluation.
    assert torch.equal(result.loss_trace[3:STEPS], result.loss_trace[2:3].expand(STEPS - 3, 5))
    assert (result.images - X).abs().max() <= EPS + 1e-6
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_a_stopped_image_holds_the_full_loop_s_iterate_at_its_step():
    iterates = []
    run(make(), X, on_step=lambda k, xk: iterates.append(xk.clone()))
    full = run(make(), X).loss_trace
    # A tolerance between the images' falls, so that some stop early and others do not.
    falls = full[:1].amin(0) - full[:STEPS].amin(0)
    tolerance = falls.median().item() + 1e-6
    result = run(make(EarlyExit(tolerance, window=STEPS - 2)), X)
    taken = result.steps_taken
    assert taken.min() < STEPS and taken.max() == STEPS
    for i, k in enumerate(taken.tolist()):
        assert torch.equal(result.images[i], iterates[k][i]), (i, k)
        assert torch.equal(result.loss_trace[:k, i], full[:k, i])


def test_the_rule():
    rule = EarlyExit(0.5, window=2)
    trace = torch.tensor([[5.0, 5.0], [4.0, 5.0], [3.0, 4.9], [3.4, 4.8]])
    assert rule.stopped(trace[:2]).tolist() == [False, False]  # not more steps than the window yet
    # The running minimum over the last 2 steps: image 0 from 4.0 to 3.0 (fell 1.0, goes on),
    # image 1 from 5.0 to 4.8 (fell 0.2 < 0.5, stops); a rise does not count as a fall.
    assert rule.stopped(trace[:4]).tolist() == [False, True]
    assert not EarlyExit(0.0, window=1).stopped(torch.tensor([[1.0], [2.0]])).any()


def test_early_exit_is_checked():
    for bad in (dict(tolerance=-1.0), dict(tolerance=float("nan")), dict(tolerance=0.1, window=0),
                dict(tolerance=0.1, window=1.5)):
        with pytest.raises(ValueError, match="early exit"):
            EarlyExit(**bad)
    with pytest.raises(TypeError, match="early_exit must be an EarlyExit"):
        make(early_exit=0.1)
    with pytest.raises(ValueError, match="early_exit needs images purified independently"):
        make(EarlyExit(0.1), negatives="batch")
