"""Counter-based random streams: reproducible per image, independent of batch composition."""
import pytest
import torch

from pyengine import Purifier, create_model
from pyengine.models import ContrastiveHead
from pyengine.random import CounterRandom, GeneratorRandom, as_random, hash32


def test_hash_is_a_32_bit_bijection_on_a_sample_and_stays_in_range():
    x = torch.arange(0, 1 << 16, dtype=torch.int64) * 65521
    h = hash32(x)
    assert h.min() >= 0 and h.max() < 2 ** 32
    assert h.unique().numel() == x.numel()


def test_counter_draws_depend_on_seed_and_index_only():
    a = CounterRandom(7, torch.tensor([1, 3, 5, 7])).rand(4, 6)
    b = CounterRandom(7, torch.tensor([3, 7])).rand(2, 6)
    torch.testing.assert_close(a[[1, 3]], b)
    assert not torch.equal(a, CounterRandom(8, torch.tensor([1, 3, 5, 7])).rand(4, 6))
    stream = CounterRandom(7, torch.tensor([1, 3, 5, 7]))
    first, second = stream.rand(4, 6), stream.rand(4, 6)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_counter_uniforms_and_normals_have_the_right_moments():
    rng = CounterRandom(0, torch.arange(20000))
    u = rng.rand(20000, 4)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    z = rng.randn(20000, 4)
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03


def test_shared_rows_repeat_and_wrong_row_count_raises():
    rng = CounterRandom(0, torch.arange(5))
    shared = rng.rand(5, 3, shared=True)
    assert (shared == shared[0]).all()
    with pytest.raises(ValueError, match="holds 5 image indices"):
        rng.rand(4, 3)
    with pytest.raises(TypeError, match="generator must be"):
        as_random(3)
    assert isinstance(as_random(None), GeneratorRandom)


def test_purification_of_an_image_does_not_depend_on_its_batch_mates():
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    purifier = Purifier(model, ContrastiveHead(model.num_features, 16, 8), steps=3, bank=torch.randn(16, 8))
    x = torch.rand(4, 3, 16, 16)
    together = purifier.purify(x, generator=CounterRandom(1, torch.tensor([10, 11, 12, 13])))
    alone = purifier.purify(x[2:3], generator=CounterRandom(1, torch.tensor([12])))
    torch.testing.assert_close(alone, together[2:3], rtol=0, atol=1e-6)
