"""The purifier's fast path: reduced precision, channels_last, the captured CUDA-graph loop.

The CPU tests check what the fast path shares with the eager loop (the draws of K calls made
at once, the autocast objective); the CUDA tests check that the captured loop reproduces the
eager loop on the same draws and that its cache follows shapes and device moves.
"""
import pytest
import torch

from pyengine import Purifier, create_model, hardware
from pyengine.models import ContrastiveHead
from pyengine.purify import EarlyExit, ViewSampler
from pyengine.random import CounterRandom

cuda = pytest.mark.cuda  # conftest.py skips it without CUDA


def make_purifier(device="cpu", **kwargs):
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    head = ContrastiveHead(model.num_features, 16, 8)
    kwargs.setdefault("bank", torch.randn(32, 8))
    return Purifier(model, head, **kwargs).to(device)


@pytest.mark.parametrize("make_rng", [lambda: torch.Generator().manual_seed(3),
                                      lambda: CounterRandom(3, torch.arange(5))])
def test_drawing_k_steps_at_once_equals_k_single_draws(make_rng):
    sampler = ViewSampler(n_views=3)
    single_rng, batched_rng = make_rng(), make_rng()
    singles = torch.stack([sampler.draw(5, 32, 32, generator=single_rng) for _ in range(4)])
    assert torch.equal(sampler.draw(5, 32, 32, generator=batched_rng, steps=4), singles)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_where_the_cpu_computes_it_natively(monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    auto = make_purifier()
    assert auto.autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if native else None)
    assert auto.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    assert make_purifier(precision="fp32").autocast_dtype(torch.device("cpu")) is None
    assert make_purifier(precision="bf16").autocast_dtype(torch.device("cpu")) == torch.bfloat16
    # An fp64 (or fp16) classifier asked for that precision: "auto" does not autocast it.
    assert make_purifier().double().autocast_dtype(torch.device("cpu")) is None


def test_precision_setting_is_checked():
    with pytest.raises(ValueError, match="precision must be"):
        make_purifier(precision="int8")
    assert make_purifier(precision="fp16").autocast_dtype(torch.device("cpu")) == torch.float16


def test_bf16_objective_keeps_an_fp32_loss_and_a_gradient_close_to_fp32():
    purifier = make_purifier(precision="fp32")
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    draws = purifier.objective.draw(x, generator=torch.Generator().manual_seed(1))
    loss32 = purifier.objective(x, draws=draws)
    grad32, = torch.autograd.grad(loss32.sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = purifier.objective(x, draws=draws)
    grad16, = torch.autograd.grad(loss16.sum(), x)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, atol=0.05, rtol=0.02)
    # The step uses the gradient's sign: most pixels must agree.
    assert (grad16.sign() == grad32.sign()).float().mean() > 0.9


def test_bf16_purification_on_the_cpu_stays_in_the_ball_and_lowers_the_loss():
    purifier = make_purifier(steps=6, precision="bf16", eps=8 / 255)
    x = torch.rand(3, 3, 32, 32)
    result = purifier.purify(x, generator=torch.Generator().manual_seed(0), return_trace=True)
    assert (result.images - x).abs().max() <= 8 / 255 + 1e-6
    assert result.loss_trace.shape == (7, 3) and result.loss_trace.dtype == torch.float32


def test_compiled_backbone_purifies_like_the_eager_one():
    # aot_eager traces forward and backward as inductor would, without its C++ compile.
    eager = make_purifier(steps=3, precision="fp32")
    compiled = make_purifier(steps=3, precision="fp32", compile="aot_eager")
    x = torch.rand(2, 3, 32, 32)
    compiled.warmup([2], image_size=(32, 32))
    a = eager.purify(x, generator=torch.Generator().manual_seed(4), return_trace=True)
    b = compiled.purify(x, generator=torch.Generator().manual_seed(4), return_trace=True)
    assert compiled.objective._compiled_features is not None
    torch.testing.assert_close(b.loss_trace, a.loss_trace)
    torch.testing.assert_close(b.images, a.images)


def test_compile_needs_an_objective_that_can_compile_its_backbone():
    class PlainObjective(torch.nn.Module):
        def forward(self, x, *, generator=None):
            return x.flatten(1).sum(1)

    with pytest.raises(ValueError, match="compile needs an objective with compile_backbone"):
        Purifier(create_model("preact_resnet_tiny"), objective=PlainObjective(), compile=True)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_loop_reproduces_the_eager_loop(precision):
    eager = make_purifier("cuda", steps=5, precision=precision, cuda_graph=False)
    graphed = make_purifier("cuda", steps=5, precision=precision, cuda_graph=True)
    x = torch.rand(6, 3, 32, 32, device="cuda")
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    for seed in (0, 1):  # the second call replays the graph captured by the first
        a = eager.purify(x, generator=CounterRandom(seed, torch.arange(6)), return_trace=True)
        b = graphed.purify(x, generator=CounterRandom(seed, torch.arange(6)), return_trace=True)
        # Same start, same draws: the first loss agrees to rounding. Later steps may part a
        # little: the views' backward adds with atomics, so a near-zero gradient can flip sign.
        torch.testing.assert_close(b.loss_trace[0], a.loss_trace[0], atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(b.loss_trace, a.loss_trace, atol=10 * tolerance, rtol=10 * tolerance)
        assert ((b.images - a.images).abs() > 1e-5).float().mean() < 0.05
    assert len(graphed._graphs) == 1


@cuda
def test_graph_cache_follows_shapes_and_is_dropped_on_device_moves():
    purifier = make_purifier("cuda", steps=2)
    purifier.purify(torch.rand(2, 3, 32, 32, device="cuda"))
    purifier.purify(torch.rand(3, 3, 32, 32, device="cuda"))
    purifier.purify(torch.rand(2, 3, 32, 32, device="cuda"))
    assert len(purifier._graphs) == 2
    purifier.cpu()
    assert len(purifier._graphs) == 0
    purifier.purify(torch.rand(2, 3, 32, 32))  # the CPU path still works after channels_last


@cuda
def test_channels_last_backbone_and_views_on_cuda():
    purifier = make_purifier("cuda", steps=1)
    purifier.purify(torch.rand(2, 3, 32, 32, device="cuda"))
    conv = next(m for m in purifier.classifier.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert purifier.objective.channels_last
    reference = make_purifier("cuda", steps=1, channels_last=False)
    reference.purify(torch.rand(2, 3, 32, 32, device="cuda"))
    assert not reference.objective.channels_last


def test_parity_report_balances_disagreements_and_signs_test_them():
    from pyengine.data import ImageSet
    from pyengine.evaluation.parity import check_parity, sign_test_p

    reference = make_purifier(steps=2, precision="fp32")
    fast = make_purifier(steps=2, precision="bf16")
    gen = torch.Generator().manual_seed(0)
    data = ImageSet((torch.rand(6, 3, 32, 32, generator=gen) * 255).to(torch.uint8),
                    torch.randint(0, 10, (6,), generator=gen))
    report = check_parity(reference, fast, data, attack="pgd2", batch_size=4, progress=False)
    split = report["robust_disagreements"]
    # The gain difference is exactly the balance of the images only one path defends.
    assert report["gain_difference"] == pytest.approx(100 * (split["fast_only"] - split["reference_only"]) / 6)
    assert report["passed"] == (abs(report["gain_difference"]) <= 0.5)
    assert set(report["accuracy"]) == {"standard_clean", "standard_robust", "reference_clean", "reference_robust",
                                       "fast_clean", "fast_robust"}
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(10, 3) == pytest.approx(2 * 378 / 2 ** 13)


def test_parity_checks_folding_and_early_exit_against_the_unfolded_fp32_reference():
    from pyengine import EarlyExit
    from pyengine.data import ImageSet
    from pyengine.evaluation.parity import REFERENCE_PATH, check_parity, markdown

    reference = make_purifier(steps=3, **REFERENCE_PATH)
    fast = make_purifier(steps=3, precision="fp32", early_exit=EarlyExit(1e9, window=1))
    assert reference.classifier is not fast.classifier and not hasattr(reference.classifier, "folded_batchnorms")
    gen = torch.Generator().manual_seed(0)
    data = ImageSet((torch.rand(5, 3, 32, 32, generator=gen) * 255).to(torch.uint8),
                    torch.randint(0, 10, (5,), generator=gen))
    report = check_parity(reference, fast, data, attack="pgd1", batch_size=4, robust_only=True, progress=False)
    fast_path = report["fast_path"]
    assert fast_path["fold_batchnorm"] and fast_path["early_exit"] == {"tolerance": 1e9, "window": 1}
    assert report["fast_mean_steps"] == 2.0 and fast_path["steps"] == 3  # every image stopped after window + 1 steps
    assert "BN folding True, early exit 1e+09 over 1 steps (mean 2.0 of K = 3 steps)" in markdown(report)


def test_cli_parity_flags_reach_the_fast_path(monkeypatch):
    from pyengine.cli import main
    from pyengine.evaluation import parity

    seen = {}

    def stop(checkpoint, device, **settings):
        seen.update(settings)
        raise ValueError("stop here")

    monkeypatch.setattr(parity, "load_paths", stop)
    assert main(["parity", "--no-fold-batchnorm", "--early-exit", "0.05", "--early-exit-window", "7"]) == 2
    assert seen["fold_batchnorm"] is False and seen["early_exit"] == EarlyExit(0.05, 7)
    assert main(["parity"]) == 2
    assert seen["fold_batchnorm"] is True and seen["early_exit"] is None
    with pytest.raises(SystemExit) as bad:  # argparse's own errors: one line, status 2
        main(["parity", "--early-exit", "-1"])
    assert bad.value.code == 2


def test_cli_precision_choices_are_the_purifiers():
    from pyengine.cli import PURIFIER_PRECISIONS
    from pyengine.purify.purifier import PRECISIONS

    assert PURIFIER_PRECISIONS == ("auto", *PRECISIONS)
