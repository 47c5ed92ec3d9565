"""SOAP (Shi et al. 2021): auxiliary losses against direct transcriptions, joint training,
min-aux radius selection, the oracle, checkpoints, bad input, and the paper's Figure 3."""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyengine import create_model, load_purifier
from pyengine.attacks import PGD, Unrolled
from pyengine.data import ImageSet, load_cifar10
from pyengine.models import CheckpointError, save_checkpoint
from pyengine.models.aux_heads import AUX_TASKS, ReconstructionDecoder, RotationHead, build_aux_head
from pyengine.purify import Purifier
from pyengine.soap import (ConsistencyObjective, MinAuxPurifier, ReconstructionObjective, RotationObjective,
                           corrupt, crop_resize, make_objective, oracle_purify, rotate,
                           soap_purifier)
from pyengine.train import ClassifierTrainConfig, random_crop_flip, train_classifier

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
needs_cifar = pytest.mark.skipif(not (CIFAR / "test.zip").is_file(), reason="CIFAR-10 zips not available")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine is shared: one thread avoids oversubscription (10x faster there).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    return create_model("preact_resnet_tiny").to(dtype).eval()


# ---------------------------------------------------------------- the losses, written out


def rotate_as_paper(x, degrees):
    """``rotate_images`` of the authors' criterions.py."""
    return {0: x, 90: x.transpose(2, 3).flip(3), 180: x.flip(2).flip(3), 270: x.transpose(2, 3).flip(2)}[degrees]


def test_rotations_are_the_papers():
    x = torch.rand(2, 3, 5, 5)
    for k, degrees in enumerate((0, 90, 180, 270)):
        assert torch.equal(rotate(x, k), rotate_as_paper(x, degrees))


def test_rotation_losses_match_a_direct_transcription():
    model = tiny_model(torch.float64)
    head = RotationHead(model.num_features).double().eval()
    objective = RotationObjective(model, head)
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([1, 7, 3])
    purify_loss, ce_rot, ce_cls = [], 0.0, 0.0
    for i in range(3):
        total = 0.0
        for w, degrees in enumerate((0, 90, 180, 270)):
            z = model.forward_features(rotate_as_paper(x[i:i + 1], degrees))[0]
            scores = head.weight @ z + head.bias
            p = scores.exp() / scores.exp().sum()
            total += sum((p[c] - (1.0 if c == w else 0.0)) ** 2 for c in range(4))
            ce_rot += -math.log(p[w].item()) / 12
            ce_cls += -torch.log_softmax(model.fc(z), 0)[y[i]].item() / 12
        purify_loss.append(total)
    torch.testing.assert_close(objective(x), torch.stack(purify_loss))
    losses = objective.training_losses(x, y, noise_sigma=0.0)
    assert losses.aux.item() == pytest.approx(ce_rot, rel=1e-9)
    assert losses.cls.item() == pytest.approx(ce_cls, rel=1e-9)
    torch.testing.assert_close(losses.logits, model(x))


@pytest.mark.parametrize("size, crop", [(32, 24), (16, 12)])
def test_consistency_loss_matches_a_direct_transcription(size, crop):
    model = tiny_model(torch.float64)
    objective = ConsistencyObjective(model)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    start = (size - crop) // 2  # 4:28 on 32x32, as random_trans_combo(df=True)
    expected = []
    for i in range(2):
        view = F.interpolate(x[i:i + 1].flip(3)[:, :, start:start + crop, start:start + crop], [size, size])
        expected.append((model(x[i:i + 1]) - model(view)).pow(2).sum())
    torch.testing.assert_close(objective(x), torch.stack(expected))


def test_crop_resize_matches_interpolate_per_image():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32, generator=gen)
    top, left = torch.randint(0, 8, (6,), generator=gen), torch.randint(0, 8, (6,), generator=gen)
    height = 24 + (torch.rand(6, generator=gen) * (8 - top)).long()
    width = 24 + (torch.rand(6, generator=gen) * (8 - left)).long()
    flip = torch.tensor([True, False, True, False, True, True])
    out = crop_resize(x, top, left, height, width, flip)
    for i in range(6):
        src = x[i:i + 1].flip(3) if flip[i] else x[i:i + 1]
        box = src[:, :, top[i]:top[i] + height[i], left[i]:left[i] + width[i]]
        torch.testing.assert_close(out[i:i + 1], F.interpolate(box, [32, 32]), rtol=0, atol=0)
    views = ConsistencyObjective(tiny_model()).random_view(x, torch.Generator().manual_seed(0))
    assert views.shape == x.shape and not torch.equal(views, x)


def test_reconstruction_losses_match_a_direct_transcription():
    model = tiny_model(torch.float64)
    decoder = ReconstructionDecoder(model.num_features, width=8, image_size=16).double().eval()
    objective = ReconstructionObjective(model, decoder)
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 4, 9])
    expected = [sum((x[i] - decoder(model.forward_features(x[i:i + 1]))[0]).flatten() ** 2) for i in range(3)]
    torch.testing.assert_close(objective(x), torch.stack(expected))
    losses = objective.training_losses(x, y, noise_sigma=0.0)
    recon = decoder(model.forward_features(x))
    assert losses.aux.item() == pytest.approx(((recon - x) ** 2).sum().item() / x.numel(), rel=1e-9)
    assert losses.cls.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-9)


def test_corruption_is_gaussian_clipped_and_seeded():
    x = torch.full((4, 3, 32, 32), 0.5)
    a = corrupt(x, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, corrupt(x, 0.1, torch.Generator().manual_seed(1)))
    assert (a - x).std().item() == pytest.approx(0.1, rel=0.05)
    assert corrupt(x, 0.0) is x
    assert corrupt(x, 5.0).min() >= 0 and corrupt(x, 5.0).max() <= 1


# ---------------------------------------------------------------- joint training (Eq. 2)


@pytest.fixture(scope="module")
def cifar16():
    """320 class-balanced CIFAR-10 test images, average-pooled to 16x16 for speed: the first
    256 train the small models, the last 64 are held out for Figure 3."""
    if not (CIFAR / "test.zip").is_file():
        pytest.skip("CIFAR-10 zips not available")
    data = load_cifar10(CIFAR / "test.zip", "test", limit=320)
    return ImageSet(F.avg_pool2d(data.images.float(), 2).round().to(torch.uint8), data.labels)


def _probe_losses(objective, x, y, sigma):
    """The joint losses on a fixed batch drawn as training draws it (crop and flip, except for
    LC, which augments inside its loss), with batch statistics, on a copy (BN buffers untouched)."""
    if objective.task != "consistency":
        x = random_crop_flip(x, torch.Generator().manual_seed(5))
    probe = copy.deepcopy(objective).train()
    with torch.no_grad():
        losses = probe.training_losses(x, y, noise_sigma=sigma, generator=torch.Generator().manual_seed(9))
    return losses.cls.item(), losses.aux.item()


def _train(task, data, path, alpha=None, batch_size=64, epochs=4):
    model = tiny_model().train()
    head = build_aux_head(task, model.num_features, **({"image_size": 16} if task == "reconstruction" else {}))
    objective = make_objective(task, model, head)
    x, y = data.float_images()[:64], data.labels[:64]
    sigma = 0.5 if task == "reconstruction" else 0.1
    before = _probe_losses(objective, x, y, sigma)
    metrics = train_classifier(model, data, path, ClassifierTrainConfig(epochs=epochs, batch_size=batch_size, aux=task,
                                                                         alpha=alpha), progress=False, aux_head=head)
    after = _probe_losses(objective, x, y, sigma)
    return dict(model=model.eval(), objective=objective.eval(), path=path, before=before, after=after, metrics=metrics)


@pytest.fixture(scope="module")
def trained(cifar16, tmp_path_factory):
    """Per task: a preact_resnet_tiny trained jointly for a few seconds, with losses before and after."""
    cache = {}

    def get(task, alpha=None):
        if (task, alpha) not in cache:
            # Rotation batches are 4x larger: 9 steps of 32 images (x 4 rotations) suffice there.
            n, batch_size, epochs = (96, 32, 3) if task == "rotation" else (256, 64, 4)
            path = tmp_path_factory.mktemp(task) / f"{task}.safetensors"
            cache[task, alpha] = _train(task, cifar16.subset(n), path, alpha, batch_size, epochs)
        return cache[task, alpha]
    return get


@needs_cifar
@pytest.mark.parametrize("task", AUX_TASKS)
def test_joint_training_lowers_both_losses(trained, task):
    run = trained(task)
    (cls0, aux0), (cls1, aux1) = run["before"], run["after"]
    assert cls1 < cls0, (run["before"], run["after"])
    if task == "consistency":
        # An untrained net gives nearly constant logits, so LC starts near 0 and grows as the
        # classes separate; the aux term must keep it below a twin trained with alpha = 0.
        aux0 = trained(task, alpha=0.0)["after"][1]
    assert aux1 < aux0, (run["before"], run["after"], aux0)
    assert set(run["metrics"]) == {"train_cls_loss", "train_aux_loss"}


def test_plain_training_manifest_is_unchanged(tmp_path):
    data = ImageSet(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) % 10)
    model = tiny_model().train()
    train_classifier(model, data, tmp_path / "plain.safetensors", ClassifierTrainConfig(epochs=1, batch_size=8),
                     progress=False)
    from pyengine.models import read_manifest

    manifest = read_manifest(tmp_path / "plain.safetensors")
    assert not any(k.startswith("aux") for k in manifest)
    assert not {"aux", "alpha", "noise_sigma", "schedule"} & set(manifest["training"])


# ---------------------------------------------------------------- min-aux and the oracle


class TargetObjective(nn.Module):
    """||x - t||^2 per image towards fixed targets t, counting the calls and their batch sizes."""

    def __init__(self, target):
        super().__init__()
        self.register_buffer("target", target)
        self.calls = []

    def forward(self, x, *, generator=None):
        self.calls.append(x.shape[0])
        return (x - self.target).pow(2).flatten(1).sum(1)


def _target_setup():
    # Powers of two keep every step exact, so the descent lands on the target and stays.
    delta = 1 / 64
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(20, 44, (5, 3, 4, 4), generator=gen).float() * delta
    signs = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
    distance = torch.tensor([0, 1, 2, 3, 7]).float().view(-1, 1, 1, 1)
    objective = TargetObjective(x + distance * delta * signs)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    return MinAuxPurifier(classifier, objective, delta=delta, step_size=delta), x


def test_min_aux_picks_per_image_from_the_grid_with_ties_to_the_smaller_radius():
    purifier, x = _target_setup()
    result = purifier.purify(x, return_choice=True)
    # Targets at 0, 1, 2, 3 and 7 steps: reached at e = 0..3 (larger radii tie); T = 5 steps
    # cannot reach 7, and radii 5..10 tie, so 5 is chosen.
    assert result.index.tolist() == [0, 1, 2, 3, 5]
    torch.testing.assert_close(result.eps, result.index.float() * purifier.delta)
    assert result.losses.shape == (11, 5)
    dist = (result.images - x).flatten(1).abs().amax(1)
    assert (dist <= result.eps + 1e-7).all()


def test_min_aux_offers_the_purifier_interface_trace_and_iterates():
    purifier, x = _target_setup()
    choice = purifier.purify(x, return_choice=True)
    iterates = []
    traced = purifier.purify(x, return_trace=True, on_step=lambda k, xk: iterates.append((k, xk.clone())))
    assert torch.equal(traced.images, choice.images) and torch.equal(traced.images, purifier.purify(x))
    assert traced.loss_trace.shape == (purifier.steps + 1, 5)
    torch.testing.assert_close(traced.loss_trace[-1], choice.losses.gather(0, choice.index[None])[0])
    assert torch.equal(traced.loss_trace[:, 0], traced.loss_trace[0, 0].expand(purifier.steps + 1))  # e = 0
    assert [k for k, _ in iterates] == list(range(purifier.steps + 1))
    assert torch.equal(iterates[0][1], x) and torch.equal(iterates[-1][1], choice.images)
    for _, xk in iterates:
        assert ((xk - x).flatten(1).abs().amax(1) <= choice.eps + 1e-7).all()
    assert purifier.loss(x).shape == (5,)


def test_min_aux_costs_one_batched_pass_per_radius_and_equals_a_slow_per_image_search():
    purifier, x = _target_setup()
    purifier.objective.calls.clear()
    fast = purifier.purify(x, return_choice=True)
    calls = purifier.objective.calls
    assert set(calls) == {x.shape[0]}
    # e = 0 once, then radii 1..6 (7..10 cannot be told from 6): T steps + the final loss each.
    assert len(calls) == 1 + 6 * (purifier.steps + 1) <= 1 + purifier.n_radii * (purifier.steps + 1)
    for i in range(x.shape[0]):
        single = TargetObjective(purifier.objective.target[i:i + 1])
        images = [x[i:i + 1]] + [soap_purifier(purifier.classifier, single, eps=r, step_size=purifier.delta)
                                 .purify(x[i:i + 1]) for r in purifier.radii[1:]]
        losses = torch.stack([single(im) for im in images]).flatten()
        best = int(torch.nonzero(losses == losses.min())[0])
        assert best == fast.index[i].item()
        assert torch.equal(images[best][0], fast.images[i])


def test_unrolled_attack_differentiates_each_image_at_its_min_aux_radius():
    model = tiny_model()
    purifier = MinAuxPurifier(model, ConsistencyObjective(model), n_radii=4)
    # A uniform image is its own flipped crop (loss 0 already): min-aux keeps it, e = 0.
    x = torch.cat([torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.full((1, 3, 16, 16), 0.4)])
    picks = purifier.purify(x, return_choice=True).index.tolist()
    assert picks[-1] == 0 and len(set(picks[:-1])) >= 2  # the case the test is about
    xg = x.clone().requires_grad_(True)
    logits = Unrolled(purifier)(xg)
    torch.testing.assert_close(logits, purifier(x))
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    grad, = torch.autograd.grad((logits * weights).sum(), xg)

    def grad_at_radius(e):  # the whole batch unrolled at radius e (the images do not interact)
        xe = x.clone().requires_grad_(True)
        at_e = model(xe) if e == 0 else Unrolled(soap_purifier(model, purifier.objective, eps=purifier.radii[e]))(xe)
        return torch.autograd.grad((at_e * weights).sum(), xe)[0]

    by_radius = {e: grad_at_radius(e) for e in set(picks) | {purifier.n_radii}}
    for i, e in enumerate(picks):
        torch.testing.assert_close(grad[i], by_radius[e][i], rtol=1e-4, atol=1e-6)
    # The pick matters: the largest radius gives the other images another gradient.
    smaller = [i for i, e in enumerate(picks) if e < purifier.n_radii]
    assert not torch.allclose(grad[smaller], by_radius[purifier.n_radii][smaller])


def test_min_aux_with_a_network_objective_stays_in_the_chosen_ball():
    model = tiny_model()
    purifier = MinAuxPurifier(model, RotationObjective(model, RotationHead(model.num_features).eval()), n_radii=4)
    x = torch.rand(3, 3, 16, 16)
    result = purifier.purify(x, return_choice=True)
    grid = torch.tensor(purifier.radii)
    assert all(torch.isclose(grid, e).any() for e in result.eps)
    assert ((result.images - x).flatten(1).abs().amax(1) <= result.eps + 1e-6).all()
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (result.losses.gather(0, result.index[None])[0] <= result.losses[0]).all()
    assert purifier(x).shape == (3, 10)
    assert purifier.steps == 5 and purifier.step.eps == pytest.approx(16 / 255) and not purifier.step.random_start


def test_oracle_is_the_first_correct_radius_and_labelled_an_upper_bound():
    model = tiny_model()
    objective = RotationObjective(model, RotationHead(model.num_features).eval())
    purifier = MinAuxPurifier(model, objective, n_radii=3)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    per_radius = [x] + [soap_purifier(model, objective, eps=r).purify(x) for r in purifier.radii[1:]]
    with torch.no_grad():
        predictions = torch.stack([model(im).argmax(1) for im in per_radius])  # [4 radii, 4 images]
    y = predictions[torch.tensor([3, 2, 0, 1]), torch.arange(4)].clone()
    y[3] = next(c for c in range(10) if c not in predictions[:, 3].tolist())  # no radius gets image 3 right
    result = oracle_purify(purifier, x, y)
    for i in range(3):
        assert result.correct[i] and result.eps[i].item() == pytest.approx(
            int(torch.nonzero(predictions[:, i] == y[i])[0]) * purifier.delta)
    assert not result.correct[3] and result.eps[3] == result.min_aux.eps[3]
    expected = purifier.purify(x, return_choice=True)
    assert torch.equal(result.min_aux.index, expected.index) and torch.equal(result.min_aux.images, expected.images)
    assert "UPPER BOUND" in oracle_purify.__doc__ and "EVALUATION ONLY" in oracle_purify.__doc__
    with pytest.raises(ValueError, match="int64"):
        oracle_purify(purifier, x, y.float())


# ---------------------------------------------------------------- checkpoints


@needs_cifar
def test_checkpoint_round_trip_and_missing_heads(trained, tmp_path):
    run = trained("reconstruction")
    purifier = load_purifier(run["path"])
    assert isinstance(purifier, MinAuxPurifier) and purifier.manifest["aux_task"] == "reconstruction"
    assert purifier.manifest["aux_alpha"] == 100.0 and purifier.manifest["aux_noise_sigma"] == 0.5
    assert purifier.manifest["aux_head"]["image_size"] == 16
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(purifier.objective(x), run["objective"](x))
    fixed = load_purifier(run["path"], soap_eps=8 / 255)
    assert isinstance(fixed, Purifier) and fixed.step.eps == pytest.approx(8 / 255) and fixed.steps == 5
    with pytest.raises(CheckpointError, match="lacks the 'rotation' auxiliary head.*aux_task='reconstruction'"):
        load_purifier(run["path"], aux="rotation")
    consistency = load_purifier(run["path"], aux="consistency")  # h = g: no head needed
    assert isinstance(consistency.objective, ConsistencyObjective)

    model = tiny_model()
    save_checkpoint(tmp_path / "plain.safetensors", model)
    with pytest.raises(CheckpointError, match="has no contrastive head"):  # not SOAP's: the contrastive purifier
        load_purifier(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="is a contrastive checkpoint, not soap"):
        load_purifier(tmp_path / "plain.safetensors", kind="soap")
    with pytest.raises(CheckpointError, match="lacks the 'reconstruction' auxiliary head.*has no auxiliary head"):
        load_purifier(tmp_path / "plain.safetensors", aux="reconstruction")
    save_checkpoint(tmp_path / "sizeless.safetensors", model, aux={"rotation": RotationHead(128)})
    with pytest.raises(CheckpointError, match="no 'aux_head' sizes"):
        load_purifier(tmp_path / "sizeless.safetensors", aux="rotation")
    with pytest.raises(ValueError, match="unknown auxiliary task 'median'"):
        load_purifier(run["path"], aux="median")
    with pytest.raises(ValueError, match="is a soap checkpoint, not contrastive"):
        Purifier.from_checkpoint(run["path"])
    assert isinstance(load_purifier(run["path"], precision="fp32"), MinAuxPurifier)
    with pytest.raises(ValueError, match="SOAP checkpoint, whose purifiers run in fp32"):
        load_purifier(run["path"], precision="bf16")


@needs_cifar
def test_cli_trains_a_rotation_checkpoint(tmp_path, capsys):
    from pyengine.cli import main

    out = tmp_path / "rot.safetensors"
    assert main(["train-classifier", "--aux", "rotation", "--alpha", "0.25", "--noise-sigma", "0.05",
                 "--epochs", "1", "--batch-size", "16", "--limit", "16", "--test-limit", "16",
                 "--data", str(CIFAR), "--out", str(out), "--threads", "1"]) == 0
    purifier = load_purifier(out)
    manifest = purifier.manifest
    assert (manifest["aux_task"], manifest["aux_alpha"], manifest["aux_noise_sigma"]) == ("rotation", 0.25, 0.05)
    assert manifest["aux_head"] == {"task": "rotation", "in_features": 128, "num_rotations": 4}
    assert isinstance(purifier.objective, RotationObjective)
    assert "saved" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input and settings


@pytest.mark.parametrize("make_x, error, match", [
    (lambda: [[0.0]], TypeError, "must be a torch.Tensor"),
    (lambda: torch.rand(3, 16, 16), ValueError, "4-D"),
    (lambda: torch.rand(2, 3, 16, 16) * 2, ValueError, r"\[0, 1\]"),
    (lambda: torch.full((1, 3, 16, 16), math.nan), ValueError, "NaN"),
    (lambda: torch.rand(0, 3, 16, 16), ValueError, "empty batch"),
])
def test_min_aux_rejects_bad_images(make_x, error, match):
    model = tiny_model()
    purifier = MinAuxPurifier(model, ConsistencyObjective(model), n_radii=1)
    with pytest.raises(error, match=match):
        purifier.purify(make_x())


def test_bad_settings_raise():
    model = tiny_model()
    objective = ConsistencyObjective(model)
    with pytest.raises(ValueError, match="n_radii"):
        MinAuxPurifier(model, objective, n_radii=0)
    with pytest.raises(ValueError, match="delta"):
        MinAuxPurifier(model, objective, delta=0.0)
    with pytest.raises(ValueError, match=r"radius index must lie in \[1, 10\], got 0"):
        MinAuxPurifier(model, objective).rule(0)
    with pytest.raises(ValueError, match="unknown auxiliary task 'jigsaw'"):
        make_objective("jigsaw", model)
    with pytest.raises(ValueError, match="head expects 512 input features but the classifier gives 128"):
        RotationObjective(model, RotationHead(512))
    with pytest.raises(ValueError, match="square"):
        RotationObjective(model, RotationHead(128))(torch.rand(1, 3, 16, 12))
    with pytest.raises(ValueError, match="another image size"):
        ReconstructionObjective(model, ReconstructionDecoder(128, image_size=32))(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="noise_sigma"):
        objective.training_losses(torch.rand(1, 3, 16, 16), torch.zeros(1, dtype=torch.int64), noise_sigma=-1.0)
    with pytest.raises(ValueError, match="crop_fraction"):
        ConsistencyObjective(model, crop_fraction=0.0)
    data = ImageSet(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    for config, match in [(ClassifierTrainConfig(aux="jigsaw"), "config.aux"),
                          (ClassifierTrainConfig(aux="rotation", alpha=-1.0), "alpha"),
                          (ClassifierTrainConfig(aux="rotation", noise_sigma=math.nan), "noise_sigma"),
                          (ClassifierTrainConfig(aux="rotation", adversarial="fgsm"), "adversarial"),
                          (ClassifierTrainConfig(schedule="cosine"), "schedule")]:
        with pytest.raises(ValueError, match=match):
            train_classifier(model, data, "/nonexistent/x.safetensors", config, progress=False)


# ---------------------------------------------------------------- the paper's Figure 3


@needs_cifar
@pytest.mark.parametrize("task", ["consistency", "reconstruction"])
def test_figure3_attacks_raise_the_auxiliary_loss_and_purification_lowers_it(trained, cifar16, task):
    """Figure 3: L_aux is higher on PGD examples than on clean ones, and Algorithm 2 brings it down.

    (Rotation needs longer training than a unit test affords before it shows the effect.)
    """
    run = trained(task)
    model, objective = run["model"], run["objective"]
    held_out = cifar16.subset(64, offset=256)
    x = held_out.float_images()
    x_adv = PGD(model, eps=8 / 255, step_size=2 / 255, steps=10).perturb(x, held_out.labels,
                                                                        generator=torch.Generator().manual_seed(0))
    purified = soap_purifier(model, objective, eps=8 / 255).purify(x_adv)
    with torch.no_grad():
        clean, attacked, after = objective(x).mean(), objective(x_adv).mean(), objective(purified).mean()
    assert attacked > clean, (clean, attacked)
    assert after < attacked, (attacked, after)
