"""The contrastive loss against a direct, slow transcription of Eq. 4, and the objective's modes."""
import math

import pytest
import torch

from pyengine import create_model
from pyengine.models import ContrastiveHead
from pyengine.ops import contrastive_loss, contrastive_loss_reference
from pyengine.purify import ContrastiveObjective, ViewSampler


def eq4_slow(z, n_views, tau, bank=None, batch_negatives=False):
    """Eq. 4 written out: for every anchor i and positive j != i of the same image,
    -log exp(cos(z_i, z_j)/tau) / sum_k exp(cos(z_i, z_k)/tau); mean per image."""
    m = z.shape[0]
    n = m // n_views
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))  # noqa: E731
    losses = [0.0] * n
    for i in range(m):
        candidates = [k for k in range(m) if k != i and (batch_negatives or k % n == i % n)]
        terms = [cos(z[i], z[k]) / tau for k in candidates]
        terms += [cos(z[i], b) / tau for b in (bank if bank is not None else [])]
        log_z = math.log(sum(math.exp(t) for t in terms))
        for j in range(m):
            if j != i and j % n == i % n:
                losses[i % n] += (log_z - cos(z[i], z[j]) / tau) / (n_views * (n_views - 1))
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("n_views", [2, 4])
@pytest.mark.parametrize("with_bank", [False, True])
@pytest.mark.parametrize("batch_negatives", [False, True])
def test_loss_matches_eq4(n_views, with_bank, batch_negatives):
    gen = torch.Generator().manual_seed(n_views)
    z = torch.randn(n_views * 3, 5, generator=gen, dtype=torch.float64)
    bank = torch.randn(7, 5, generator=gen, dtype=torch.float64) if with_bank else None
    expected = eq4_slow(z, n_views, 0.2, bank, batch_negatives)
    torch.testing.assert_close(contrastive_loss_reference(z, n_views, 0.2, bank, batch_negatives), expected)
    torch.testing.assert_close(contrastive_loss(z, n_views, 0.2, bank, batch_negatives).double(), expected)


def test_bank_mode_does_not_depend_on_batch_mates():
    gen = torch.Generator().manual_seed(0)
    model = create_model("preact_resnet_tiny").eval()
    head = ContrastiveHead(model.num_features, 16, 8).eval()
    objective = ContrastiveObjective(model, head, ViewSampler(n_views=4, shared_across_batch=True))
    objective.build_bank(torch.rand(8, 3, 32, 32, generator=gen), generator=gen)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        alone = objective(x[:1], generator=torch.Generator().manual_seed(5))
        together = objective(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(alone, together[:1])


def test_batch_mode_needs_two_images_and_bank_mode_needs_a_bank():
    model = create_model("preact_resnet_tiny").eval()
    head = ContrastiveHead(model.num_features, 16, 8).eval()
    with pytest.raises(ValueError, match="at least 2 images"):
        ContrastiveObjective(model, head, negatives="batch")(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="bank of negatives is empty"):
        ContrastiveObjective(model, head)(torch.rand(1, 3, 32, 32))


def test_objective_rejects_mismatched_head_and_bad_settings():
    model = create_model("preact_resnet_tiny")
    with pytest.raises(ValueError, match="head expects 512 input features but the classifier gives 128"):
        ContrastiveObjective(model, ContrastiveHead(512, 128, 8))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveObjective(model, ContrastiveHead(128, 16, 8), temperature=0.0)
    with pytest.raises(ValueError, match="negatives"):
        ContrastiveObjective(model, ContrastiveHead(128, 16, 8), negatives="others")
    with pytest.raises(TypeError, match="HookedFeatures"):
        ContrastiveObjective(torch.nn.Linear(3, 3), ContrastiveHead(3, 4, 2))
