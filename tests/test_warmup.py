"""Compilation paid once: Purifier.warmup compiles the warmed-up batch sizes, pads other
calls up to them where that leaves every image's result unchanged, and never compiles in a
purify call."""
import pytest
import torch

from pyengine import Purifier, create_model
from pyengine.models import ContrastiveHead


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is and counts compilations."""

    def __init__(self):
        self.compilations = 0

    def __call__(self, graph_module, example_inputs):
        self.compilations += 1
        return graph_module.forward


def make(negatives="bank", compile=False, **kwargs):
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    head = ContrastiveHead(model.num_features, 16, 8)
    return Purifier(model, head, bank=torch.randn(32, 8), negatives=negatives, steps=3, precision="fp32",
                    compile=compile, image_size=(32, 32), **kwargs)


def purify(purifier, x, seed=5):
    return purifier.purify(x, generator=torch.Generator().manual_seed(seed), return_trace=True)


def test_without_warmup_nothing_compiles_and_results_are_the_eager_ones():
    backend = CountingBackend()
    compiled, eager = make(compile=backend), make()
    x = torch.rand(3, 3, 32, 32)
    a, b = purify(compiled, x), purify(eager, x)
    assert backend.compilations == 0
    assert torch.equal(a.images, b.images) and torch.equal(a.loss_trace, b.loss_trace)


def test_warmup_compiles_each_size_once_and_pads_calls_up_to_a_warmed_size():
    backend = CountingBackend()
    compiled, eager = make(compile=backend), make()
    compiled.warmup([4, 8])
    after_warmup = backend.compilations
    assert after_warmup >= 2
    for n in (8, 6, 4, 3, 2, 16):  # 6 -> 8 and 3 -> 4 are padded; 2 (4 > 1.5 x 2) and 16 run eagerly
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        got, want = purify(compiled, x), purify(eager, x)
        torch.testing.assert_close(got.images, want.images, atol=0, rtol=0)
        torch.testing.assert_close(got.loss_trace, want.loss_trace)
        assert got.images.shape == x.shape and got.loss_trace.shape == (4, n)
    assert backend.compilations == after_warmup  # serving compiled nothing more


def test_padding_picks_the_smallest_warmed_size_within_the_limit():
    purifier = make(compile=CountingBackend())
    purifier._warm.update({4, 8, 32})
    x = lambda n: torch.zeros(n, 3, 32, 32)  # noqa: E731
    assert [purifier._bucket(x(n)) for n in (3, 4, 5, 6, 7, 20, 40)] == [4, None, None, 8, 8, None, None]
    assert make()._bucket(x(3)) is None  # neither compiled nor captured: padding would buy nothing


def test_batch_negatives_are_never_padded():
    backend = CountingBackend()
    compiled, eager = make("batch", compile=backend), make("batch")
    compiled.warmup([4])
    assert compiled._bucket(torch.zeros(3, 3, 32, 32)) is None
    x = torch.rand(3, 3, 32, 32)
    got, want = purify(compiled, x), purify(eager, x)
    assert torch.equal(got.images, want.images)


def test_warmup_checks_its_arguments():
    purifier = make(compile=CountingBackend())
    for bad in ([], [0], [2.0], [True]):
        with pytest.raises(ValueError, match="batch_sizes must be positive integers"):
            purifier.warmup(bad)
    free = Purifier(create_model("preact_resnet_tiny"), ContrastiveHead(128, 16, 8), bank=torch.randn(8, 8), steps=1)
    with pytest.raises(ValueError, match="warmup needs image_size"):
        free.warmup([2])
