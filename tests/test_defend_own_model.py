"""The whole "defend your own model" workflow on small real timm and torchvision models.

Each model is created with random weights, trained for two epochs on a 5-class subset of the
CIFAR-10 copy resized to 64 px (200 images), saved to a weights file, then: the head and bank
(train_head_for_model), purification, an evaluation, reloading (which refuses other weights
and another image size) and, for the ResNet-18, an ONNX export checked in ONNX Runtime (the
export traces the input gradient of the whole network, about 30 s for a ResNet-18 on one core,
hence one model; timm's resnet10t also has no ONNX form yet: its average-pooling shortcut's
gradient, aten.avg_pool2d_backward, has no lowering in pyengine.deploy.lowering).
"""
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyengine import Purifier, load_purifier
from pyengine.defend import train_head_for_model
from pyengine.image_folders import load_images
from pyengine.models import sources
from pyengine.resume import file_sha256
from pyengine.models.checkpoint import CheckpointError, read_manifest
from pyengine.train import HeadTrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
CLASSES = ["airplane", "cat", "frog", "ship", "truck"]
SIZE = 64
pytestmark = pytest.mark.skipif(not (DATA / "train.zip").is_file(), reason=f"no CIFAR-10 copy at {DATA}")


def need(library: str):
    """timm or torchvision through pyengine's importer (which works around CUDA torchvision wheels
    on a CPU torch), or skip."""
    try:
        return getattr(sources, f"import_{library}")()
    except ImportError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def data():
    train = load_images(DATA / "train.zip", SIZE, "train", limit=200, classes=CLASSES)
    test = load_images(DATA / "test.zip", SIZE, "test", limit=16, classes=CLASSES)
    return train, test


def build(source: str) -> torch.nn.Module:
    library, name = source.split(":")
    lib = need(library)
    torch.manual_seed(0)
    if library == "timm":
        return lib.create_model(name, pretrained=False, num_classes=len(CLASSES))
    return lib.models.get_model(name, weights=None, num_classes=len(CLASSES))


def train_briefly(model, train, epochs=2):
    """A user's classifier: two epochs of Adam on normalised images; returns each epoch's mean loss."""
    mean, std = torch.tensor(sources.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(sources.IMAGENET_STD).view(1, 3, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for x, y in train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(len(losses))):
            loss = F.cross_entropy(model((x - mean) / std), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        losses.append(total / len(train))
    return model.eval(), losses


@pytest.fixture(scope="module", params=["timm:resnet10t", "torchvision:resnet18"])
def defended(request, data, tmp_path_factory):
    source = request.param
    model, losses = train_briefly(build(source), data[0])
    folder = tmp_path_factory.mktemp(source.replace(":", "_"))
    if source.startswith("timm"):
        from safetensors.torch import save_file

        weights = folder / "weights.safetensors"
        save_file(model.state_dict(), str(weights))
    else:  # a torch.save state dict in a wrapper, read with weights_only=True
        weights = folder / "weights.pt"
        torch.save({"state_dict": model.state_dict()}, weights)
    out = folder / "defended.safetensors"
    metrics = train_head_for_model(source, data[0], out, weights=weights, progress=False,
                                   config=HeadTrainConfig(epochs=1, batch_size=32, lr=1e-3, bank_images=32))
    return {"source": source, "model": model, "losses": losses, "weights": weights, "out": out, "metrics": metrics}


def test_the_classifier_learned_and_the_checkpoint_records_it(defended):
    assert defended["losses"][-1] < defended["losses"][0]
    manifest = read_manifest(defended["out"])
    record = manifest["model_source"]
    assert record["source"] == defended["source"]
    assert record["weights"]["sha256"] == file_sha256(defended["weights"])
    assert manifest["image_size"] == [SIZE, SIZE] and manifest["class_names"] == CLASSES
    assert record["normalization"] == {"mean": list(sources.IMAGENET_MEAN), "std": list(sources.IMAGENET_STD)}
    assert record["num_classes"] == len(CLASSES) and record["feature_layer"]["read"] == "input"
    assert defended["metrics"]["bank_size"] == 32 * 4


def test_the_defended_model_is_the_users_model(defended, data):
    purifier = load_purifier(defended["out"], steps=3)
    x = data[1].subset(4).float_images()
    mean, std = torch.tensor(sources.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(sources.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(purifier.classifier(x), defended["model"]((x - mean) / std), atol=1e-4, rtol=1e-4)


def test_purification_lowers_the_loss_inside_the_ball(defended, data):
    purifier = load_purifier(defended["out"], steps=5)
    x = data[1].subset(8).float_images()
    result = purifier.purify(x, generator=torch.Generator().manual_seed(0), return_trace=True)
    assert result.images.shape == x.shape
    assert (result.images - x).abs().max() <= purifier.step.eps + 1e-6
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert result.loss_trace[-1].mean() < result.loss_trace[0].mean()


def test_evaluation_table(defended, data, tmp_path):
    from pyengine.evaluation import EvalConfig, evaluate

    purifier = load_purifier(defended["out"], steps=2)
    config = EvalConfig(attacks=["pgd2"], n=8, batch_size=8, checkpoint=str(defended["out"]))
    summary = evaluate(purifier, data[1].subset(8), config, tmp_path / "eval", manifest=purifier.manifest)
    assert (tmp_path / "eval" / "table.md").is_file()
    row = summary["attacks"]["pgd2"] if "attacks" in summary else summary["pgd2"]
    assert 0 <= row["standard"] <= 1 and 0 <= row["purified"] <= 1


def test_onnx_export_matches_the_engine(defended, data, tmp_path, monkeypatch):
    from pyengine.deploy import OnnxPurifier, export_onnx

    if defended["source"] != "torchvision:resnet18":
        pytest.skip("one export is enough (see the module doc)")

    for name in ("contrastive_loss", "view_sampling", "projection_step"):  # the export's own ops
        monkeypatch.setattr(importlib.import_module(f"pyengine.ops.{name}"), "use_fused", lambda *t: False)
    purifier = load_purifier(defended["out"], steps=1, precision="fp32")  # the export is fp32
    with pytest.raises(ValueError, match="64x64 pixels only"):
        export_onnx(purifier, tmp_path / "m32.onnx", 1, 2, image_size=(32, 32))
    path = export_onnx(purifier, tmp_path / "m.onnx", 1, 2)
    x = data[1].subset(2).float_images()
    g = torch.Generator().manual_seed(3)
    noise = (torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1) * purifier.step.eps
    views = purifier.objective.views.draw(2, SIZE, SIZE, generator=g)[None]
    expected = purifier.purify(x, generator=torch.Generator().manual_seed(3))
    got = OnnxPurifier(path, providers=["CPUExecutionProvider"]).purify(
        x.numpy(), start_noise=noise.numpy(), randoms={"view_params": views.numpy()})
    # A pixel whose gradient is ~0 may take the other sign: one step of 2/255 apart.
    assert np.mean(np.abs(got.images - expected.numpy()) > 1e-4) < 1e-3
    assert (got.logits.argmax(1) == purifier.classifier(expected).argmax(1).numpy()).all()


def test_reload_finds_checks_and_refuses(defended, data, tmp_path):
    x = data[1].subset(2).float_images()
    first = load_purifier(defended["out"], steps=2).purify(x, generator=torch.Generator().manual_seed(1))
    moved = tmp_path / defended["out"].name
    shutil.copy(defended["out"], moved)
    defended["weights"].rename(tmp_path / "w")
    with pytest.raises(CheckpointError, match="found neither"):  # the weights are elsewhere: say so
        Purifier.from_checkpoint(moved)
    again = Purifier.from_checkpoint(moved, weights=tmp_path / "w", steps=2)
    assert torch.equal(again.purify(x, generator=torch.Generator().manual_seed(1)), first)
    shutil.copy(tmp_path / "w", tmp_path / defended["weights"].name)  # beside the checkpoint: found
    Purifier.from_checkpoint(moved, steps=2)
    (tmp_path / "w").rename(defended["weights"])
    other = build(defended["source"])  # other weights under the recorded name
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not the file this checkpoint was trained on"):
        Purifier.from_checkpoint(moved, weights=tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="at 64x64 pixels"):
        Purifier.from_checkpoint(defended["out"], image_size=(32, 32))
    with pytest.raises(ValueError, match="built for 64x64"):
        load_purifier(defended["out"]).purify(torch.rand(1, 3, 32, 32))


def test_command_line(defended, tmp_path, capsys):
    from pyengine.cli import main

    if defended["source"] != "timm:resnet10t":
        pytest.skip("the commands are the same for every source: one is enough")
    source, weights = defended["source"], str(defended["weights"])
    out = tmp_path / "cli.safetensors"
    common = ["--data", str(DATA / "train.zip"), "--classes", ",".join(CLASSES), "--limit", "20", "--epochs", "1",
              "--batch-size", "10", "--out", str(out)]
    assert main(["train-head", "--model", source, "--weights", weights, *common]) == 2
    assert "--model needs --image-size" in capsys.readouterr().err
    assert main(["train-head", "--model", source, "--checkpoint", "cifar10_preact_resnet_tiny.safetensors",
                 *common]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["train-head", "--model", "timm:resnet81", "--weights", weights, "--image-size", "64", *common]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["train-head", "--model", source, "--weights", weights, "--image-size", "64", *common]) == 0
    assert read_manifest(out)["class_names"] == CLASSES
    test = ["--data", str(DATA / "test.zip"), "--n", "5", "--steps", "1"]
    assert main(["demo", "--checkpoint", str(out), *test]) == 0
    printed = capsys.readouterr().out
    assert f"pyengine demo: {source} from" in printed and "robust accuracy (PGD)" in printed
    other = tmp_path / "other.safetensors"
    other.write_bytes(defended["out"].read_bytes())  # a file, but not the weights
    assert main(["demo", "--checkpoint", str(out), "--weights", str(other), *test]) == 2
    assert "not the file this checkpoint was trained on" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(out), "--n", "5"]) == 2  # the default data is CIFAR-10's
    assert "give its images with --data" in capsys.readouterr().err
