"""Eval-mode batch-norm folding against the unfolded model: values and input gradients in
float64, for every registered model, and the user's module left untouched."""
import copy

import pytest
import torch
from torch import nn

from pyengine import ContrastiveObjective, Purifier, create_model, list_models
from pyengine.models import ContrastiveHead, fold_batchnorm, foldable_pairs


def with_statistics(model: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters: a fresh BN is the identity, and
    folding an identity would test nothing."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(size, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=gen) - 0.5)
    return model.eval()


# Per architecture: the pairs that must fold. PreAct blocks: conv1 -> bn2 in every block (bn1
# follows the residual sum), plus the stem when the first block's shortcut is a convolution
# (WRN); airbench: conv -> max pool -> BN and conv -> BN in each of its 3 groups.
EXPECTED = {"preact_resnet18": 8, "preact_resnet18_half": 8, "preact_resnet_tiny": 3,
            "wide_resnet28_10": 13, "wide_resnet34_10": 16, "airbench94": 6}


@pytest.mark.parametrize("name", list_models())
def test_folded_model_matches_the_unfolded_one_in_values_and_input_gradients(name):
    torch.manual_seed(0)
    model = with_statistics(create_model(name)).double()
    before = copy.deepcopy(model.state_dict())
    pairs = foldable_pairs(model)
    assert len(pairs) == EXPECTED[name], pairs
    folded = fold_batchnorm(model)
    assert folded is not model and folded.folded_batchnorms == pairs
    assert all(isinstance(folded.get_submodule(bn), nn.Identity) for _, bn in pairs)
    x = torch.rand(1 if "wide" in name else 2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    want = model.forward_features(x)
    grad_want, = torch.autograd.grad(want.square().sum(), x)
    got = folded.forward_features(x)
    grad_got, = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)
    # The user's module is untouched: same weights, same batch norms.
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(isinstance(model.get_submodule(bn), nn.BatchNorm2d) for _, bn in pairs)


def test_what_does_not_fold():
    class Shared(nn.Module):  # a conv used twice, a conv output read by more than its BN; one pair folds
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.other = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(self.other(y)) + self.conv(x)

    assert foldable_pairs(Shared().eval()) == [("other", "bn2")]
    pool = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4)).eval()
    assert foldable_pairs(pool) == [("0", "2")]
    with torch.no_grad():
        pool[2].weight[0] = -1.0  # a negative scale does not commute with the max pool
    assert foldable_pairs(pool) == []
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert foldable_pairs(no_stats) == [] and fold_batchnorm(no_stats) is no_stats


def test_an_untraceable_model_is_left_unfolded_with_a_warning():
    class Branchy(nn.Sequential):
        def forward(self, x):
            return self[1](self[0](x)) if x.sum() > 0 else x  # control flow on the input

    model = Branchy(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.warns(RuntimeWarning, match="does not trace"):
        assert fold_batchnorm(model) is model


def test_the_purifier_folds_a_copy_and_purifies_as_the_unfolded_one():
    torch.manual_seed(0)
    model = with_statistics(create_model("preact_resnet_tiny")).double()
    head = ContrastiveHead(model.num_features, 16, 8).double()
    before = copy.deepcopy(model.state_dict())
    bank = torch.randn(32, 8, dtype=torch.float64)
    model.train()
    folded = Purifier(model, head, bank=bank, steps=3)
    assert model.training and all(p.requires_grad for p in model.parameters())  # not even its mode changed
    plain = Purifier(model, head, bank=bank, steps=3, fold_batchnorm=False)
    assert folded.classifier is not model and folded.objective.classifier is folded.classifier
    assert plain.classifier is model
    given = Purifier(model, objective=ContrastiveObjective(model, head, bank=bank), steps=3)
    assert given.classifier is model and not given.fold_batchnorm  # an objective given holds its own classifier
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    a = folded.purify(x, generator=torch.Generator().manual_seed(1), return_trace=True)
    b = plain.purify(x, generator=torch.Generator().manual_seed(1), return_trace=True)
    torch.testing.assert_close(a.loss_trace, b.loss_trace, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-9)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
