"""Training loops: bf16 autocast, the precision checks and what the manifests record."""
from __future__ import annotations

import pytest
import torch

from pyengine import create_model
from pyengine.data import ImageSet
from pyengine.models import ContrastiveHead, read_manifest
from pyengine.models.checkpoint import load_checkpoint
from pyengine.train import ClassifierTrainConfig, HeadTrainConfig, train_classifier, train_head


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(16) % 10)


def _trained(data, path, **config):
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny").train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train_classifier(model, data, path, ClassifierTrainConfig(epochs=1, batch_size=8, **config), progress=False)
    return initial, model.state_dict()


@pytest.mark.parametrize("adversarial", ["none", "fgsm"])
def test_bf16_training_takes_the_fp32_steps_approximately(data, tmp_path, adversarial):
    initial, fp32 = _trained(data, tmp_path / "fp32.safetensors", adversarial=adversarial)
    _, bf16 = _trained(data, tmp_path / "bf16.safetensors", adversarial=adversarial, precision="bf16")
    for name in ("conv1.weight", "fc.weight"):
        assert bf16[name].dtype == torch.float32
        step32, step16 = fp32[name] - initial[name], bf16[name] - initial[name]
        assert not torch.equal(step32, step16), "bf16 autocast made no difference: was it applied?"
        assert torch.cosine_similarity(step32.flatten(), step16.flatten(), dim=0) > 0.9, name
    assert read_manifest(tmp_path / "bf16.safetensors")["training"]["precision"] == "bf16"
    assert "precision" not in read_manifest(tmp_path / "fp32.safetensors")["training"]  # fp32 manifests unchanged


def test_bf16_head_training_keeps_an_fp32_head(data, tmp_path):
    torch.manual_seed(0)
    classifier = create_model("preact_resnet_tiny").eval()
    head = ContrastiveHead(classifier.num_features, 16, 8)
    config = HeadTrainConfig(epochs=1, batch_size=8, bank_images=4, precision="bf16")
    train_head(classifier, head, data, tmp_path / "head.safetensors", config, progress=False)
    ckpt = load_checkpoint(tmp_path / "head.safetensors")
    assert all(p.dtype == torch.float32 for p in ckpt.require_head().parameters())
    assert ckpt.aux["contrastive_bank"].dtype == torch.float32
    assert ckpt.manifest["head_training"]["precision"] == "bf16"


def test_unknown_precisions_are_refused_before_any_work(data, tmp_path):
    model = create_model("preact_resnet_tiny")
    with pytest.raises(ValueError, match="precision must be one of"):
        train_classifier(model, data, tmp_path / "x.safetensors", ClassifierTrainConfig(precision="fp16"),
                         progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        train_head(model, ContrastiveHead(model.num_features, 16, 8), data, tmp_path / "y.safetensors",
                   HeadTrainConfig(precision="int8"), progress=False)
    assert not list(tmp_path.iterdir())
