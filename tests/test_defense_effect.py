"""The shipped checkpoints load whole, and the paper's Fig. 2 effect on the standard one:
attacks raise L_s, purification lowers it."""
import pytest
import torch

from pyengine import Purifier
from pyengine.attacks import PGD
from pyengine.data import load_cifar10
from pyengine.demo import AIRBENCH_CHECKPOINT, CHECKPOINTS, DEFAULT_CHECKPOINT, STANDARD_CHECKPOINT
from pyengine.loading import load_purifier
from pyengine.random import CounterRandom
from pyengine.soap import MinAuxPurifier



@pytest.fixture(scope="module")
def batch(cifar10):
    data = load_cifar10(cifar10, "test", limit=64)
    return data.float_images(), data.labels


@pytest.mark.parametrize("name, task", [("soap_lc", "consistency"), ("soap_rp", "rotation")])
def test_shipped_soap_checkpoint_loads_min_aux(name, task):
    purifier = load_purifier(CHECKPOINTS / f"cifar10_preact_resnet_tiny_{name}.safetensors")
    assert isinstance(purifier, MinAuxPurifier) and purifier.manifest["aux_task"] == task
    assert "train-classifier" in purifier.manifest["training"]["command"]


@pytest.mark.parametrize("checkpoint", [STANDARD_CHECKPOINT, DEFAULT_CHECKPOINT, AIRBENCH_CHECKPOINT],
                         ids=lambda p: p.stem)
def test_shipped_checkpoint_loads_with_head_and_bank(checkpoint):
    purifier = Purifier.from_checkpoint(checkpoint)
    assert purifier.objective.bank is not None and purifier.objective.bank.shape[1] == purifier.objective.head.out_features
    assert "train-head" in purifier.manifest["head_training"]["command"]


def test_shipped_airbench_classifier_is_the_trained_one(batch):
    x, y = batch
    purifier = Purifier.from_checkpoint(AIRBENCH_CHECKPOINT)
    assert purifier.manifest["metrics"]["test_accuracy"] > 0.9
    with torch.no_grad():
        accuracy = (purifier.classifier(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8  # 90.4 % on all 10,000: a random or half-trained network fails this


def test_attack_raises_contrastive_loss_and_purification_lowers_it(batch):
    x, y = batch
    purifier = Purifier.from_checkpoint(STANDARD_CHECKPOINT, steps=10)
    indices = torch.arange(len(y))
    x_adv = PGD(purifier.classifier, eps=8 / 255, steps=10).perturb(x, y, generator=CounterRandom(0, indices))
    # L_s is a random quantity (random views): average over 8 draws, then over the images.
    loss = lambda t: torch.stack([purifier.loss(t, generator=CounterRandom(s, indices)) for s in range(8)]).mean(0)  # noqa: E731
    clean, attacked = loss(x), loss(x_adv)
    assert attacked.mean() > clean.mean()
    purified = purifier.purify(x_adv, generator=CounterRandom(9, indices))
    assert loss(purified).mean() < attacked.mean()
