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


def test_a_resumed_run_keeps_the_data_derived_stem_and_recipe_fields_reach_the_manifest(data, tmp_path):
    torch.manual_seed(0)
    model = create_model("airbench94")
    config = ClassifierTrainConfig(epochs=1, batch_size=8, label_smoothing=0.2, bias_lr_scale=64.0,
                                   warmup_fraction=0.23, crop_padding=2, crop_pad_mode="reflect")
    train_classifier(model, data, tmp_path / "a.safetensors", config, progress=False)
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    assert torch.equal(ckpt.classifier.whiten_weight, model.whiten_weight)
    assert ckpt.classifier.whiten_weight.abs().sum() > 0, "init_from_data was not called"
    training = ckpt.manifest["training"]
    assert (training["label_smoothing"], training["bias_lr_scale"], training["crop_pad_mode"]) == (0.2, 64.0, "reflect")
    plain = _trained(data, tmp_path / "plain.safetensors")
    assert plain and "label_smoothing" not in read_manifest(tmp_path / "plain.safetensors")["training"]


def test_batch_norm_shifts_get_their_own_learning_rate_and_the_same_decay_per_step():
    from pyengine.train import _param_groups

    model = create_model("airbench94")
    groups = _param_groups(model, [], ClassifierTrainConfig(bias_lr_scale=64.0, weight_decay=1e-3))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in groups[1]["params"]} == {id(m.bias) for m in norms}
    assert groups[1]["lr_scale"] * groups[1]["weight_decay"] == pytest.approx(groups[0]["weight_decay"])
    trained = {id(p) for g in groups for p in g["params"]}
    assert all(id(m.weight) not in trained for m in norms), "frozen batch-norm scales must not be trained"
    assert all(p.requires_grad for g in groups for p in g["params"])
    one = _param_groups(model, [], ClassifierTrainConfig())
    assert len(one) == 1 and len(one[0]["params"]) == len(trained)


@pytest.mark.parametrize("field, value, match", [
    ("label_smoothing", 1.0, "label_smoothing"), ("bias_lr_scale", 0.0, "bias_lr_scale"),
    ("warmup_fraction", 1.0, "warmup_fraction"), ("crop_padding", -1, "crop_padding"),
    ("crop_pad_mode", "wrap", "crop_pad_mode"), ("schedule", "cosine", "schedule"),
])
def test_recipe_values_out_of_range_are_refused_before_any_work(data, tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        train_classifier(create_model("preact_resnet_tiny"), data, tmp_path / "x.safetensors",
                         ClassifierTrainConfig(**{field: value}), progress=False)
    assert not list(tmp_path.iterdir())


def test_label_smoothing_is_refused_for_soap_training(data, tmp_path):
    with pytest.raises(ValueError, match="label_smoothing applies to standard and adversarial"):
        train_classifier(create_model("preact_resnet_tiny"), data, tmp_path / "x.safetensors",
                         ClassifierTrainConfig(aux="rotation", label_smoothing=0.1), progress=False)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch, native, expected):
    from pyengine import hardware
    from pyengine.train import resolve_precision

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_the_command_line_fills_in_the_architecture_recipe_and_a_flag_wins():
    from pyengine.cli import build_parser, train_config
    from pyengine.models.airbench import AIRBENCH_RECIPE

    parse = build_parser().parse_args
    config = train_config(parse(["train-classifier", "--model", "airbench94", "--out", "x", "--lr", "0.5"]))
    assert config.lr == 0.5 and config.batch_size == AIRBENCH_RECIPE["batch_size"]
    assert config.label_smoothing == AIRBENCH_RECIPE["label_smoothing"]
    plain = train_config(parse(["train-classifier", "--model", "preact_resnet_tiny", "--out", "x"]))
    assert (plain.epochs, plain.batch_size, plain.lr, plain.label_smoothing) == (15, 128, 0.2, 0.0)
