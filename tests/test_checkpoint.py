"""Checkpoints: safetensors tensors plus a JSON manifest, loaded without pickle."""
from __future__ import annotations

import json
import pickle
import re

import _pickle
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pyengine.models import (Checkpoint, CheckpointError, ContrastiveHead, HookedFeatures,
                             create_model, load_checkpoint, model_config, read_manifest,
                             save_checkpoint)

ARCH = "preact_resnet_tiny"
COMMAND = "pyengine train --arch preact_resnet_tiny --epochs 1"


def _trained_like():
    """A classifier and head whose BN statistics differ from a fresh init, so buffers matter."""
    torch.manual_seed(0)
    cfg = model_config(ARCH)
    model = create_model(ARCH, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    head = ContrastiveHead(cfg.num_features, cfg.head_hidden, cfg.head_out)
    with torch.no_grad():
        head(model.forward_features(torch.rand(8, 3, 32, 32)))  # train mode: updates running stats
    return model.eval(), head.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, head = _trained_like()
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    save_checkpoint(path, model, head=head, aux={"rotation": nn.Linear(4, 2)},
                    training={"command": COMMAND, "epochs": 1}, dataset="cifar10-jpeg")
    return path, model, head


def test_round_trip(saved):
    path, model, head = saved
    ck = load_checkpoint(path)
    assert isinstance(ck, Checkpoint)
    assert not ck.classifier.training and not ck.head.training
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ck.classifier(x), model(x))
        features = model.forward_features(x)
        assert torch.equal(ck.classifier.forward_features(x), features)
        assert torch.equal(ck.head(features), head(features))
    assert torch.equal(ck.classifier.bn.running_var, model.bn.running_var)
    assert torch.equal(ck.head[1].running_mean, head[1].running_mean)
    assert ck.head[1].running_mean.abs().sum() > 0
    assert sorted(ck.aux) == ["rotation.bias", "rotation.weight"]
    assert ck.require_head() is ck.head
    assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_manifest_fields(saved):
    path, model, head = saved
    manifest = read_manifest(path)
    assert manifest["architecture"] == ARCH
    assert manifest["format_version"] == 1
    assert manifest["num_classes"] == 10
    assert manifest["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert manifest["head"] == {"in_features": 128, "hidden": 64, "out_features": 16}
    assert manifest["training"] == {"command": COMMAND, "epochs": 1}
    assert manifest["dataset"] == "cifar10-jpeg"
    assert manifest["path"] == str(path)
    assert load_checkpoint(path).manifest["training"]["command"] == COMMAND


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading used pickle")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    for module in (pickle, _pickle):
        monkeypatch.setattr(module, "loads", refuse)
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    path, model, _ = saved
    ck = load_checkpoint(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ck.classifier(x), model(x))


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for fn in (load_checkpoint, read_manifest):
        with pytest.raises(CheckpointError, match="not found: " + re.escape(str(missing))):
            fn(missing)


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "header_only"])
def test_corrupt_file(saved, tmp_path, damage):
    raw = saved[0].read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes({
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "header_only": raw[:100],
    }[damage])
    with pytest.raises(CheckpointError, match="corrupt checkpoint " + re.escape(str(bad))):
        load_checkpoint(bad)


def _rewrite(src, dst, *, manifest=None, tensors=None):
    """Re-save ``src`` at ``dst`` with an edited manifest (dict or raw string) and/or tensors."""
    meta = json.loads(_raw_manifest(src))
    if callable(manifest):
        manifest = manifest(meta)
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest)
    t = load_file(str(src))
    save_file(tensors(t) if tensors else t, str(dst),
              metadata={"pyengine_manifest": manifest if manifest is not None else json.dumps(meta)})
    return dst


def _raw_manifest(path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["pyengine_manifest"]


def test_safetensors_without_manifest(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="without a pyengine manifest"):
        load_checkpoint(plain)
    save_file({"weight": torch.zeros(2)}, str(plain), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="without a pyengine manifest"):
        read_manifest(plain)


@pytest.mark.parametrize("edit, message", [
    ("{not json", "corrupt manifest"),
    ("[1, 2]", "expected a JSON object"),
    (lambda m: {**m, "format_version": 99}, "format version 99"),
    (lambda m: {k: v for k, v in m.items() if k != "architecture"}, "cannot rebuild.*architecture"),
    (lambda m: {**m, "architecture": "preact_resnet81"}, "cannot rebuild.*did you mean preact_resnet18"),
])
def test_bad_manifest(saved, tmp_path, edit, message):
    bad = _rewrite(saved[0], tmp_path / "bad.safetensors", manifest=edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


@pytest.mark.parametrize("edit", [
    lambda t: {k: v for k, v in t.items() if k != "classifier.fc.weight"},
    lambda t: {**t, "classifier.fc.weight": torch.zeros(10, 3)},
    lambda t: {**t, "head.0.bias": torch.zeros(5)},
    lambda t: {**t, "classifier.extra": torch.zeros(1)},
])
def test_mismatched_tensors(saved, tmp_path, edit):
    bad = _rewrite(saved[0], tmp_path / "bad.safetensors", tensors=edit)
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        load_checkpoint(bad)


def test_architecture_swapped_in_manifest(saved, tmp_path):
    bad = _rewrite(saved[0], tmp_path / "bad.safetensors",
                   manifest=lambda m: {**m, "architecture": "preact_resnet18"})
    with pytest.raises(CheckpointError, match=r"does not match its manifest \(classifier\.\*\)"):
        load_checkpoint(bad)


def test_require_head_without_head(tmp_path):
    model, _ = _trained_like()
    path = save_checkpoint(tmp_path / "nohead.safetensors", model)
    ck = load_checkpoint(path)
    assert ck.head is None and "head" not in ck.manifest
    with pytest.raises(CheckpointError, match="train-head"):
        ck.require_head()


def test_save_needs_a_registered_model(tmp_path):
    with pytest.raises(CheckpointError, match="create_model"):
        save_checkpoint(tmp_path / "x.safetensors", HookedFeatures(nn.Sequential(nn.Flatten()), "0"))
    assert not (tmp_path / "x.safetensors").exists()


# ---- fp16 publishing --------------------------------------------------------------------

def test_an_fp16_copy_loads_back_as_fp32_with_its_manifest(saved, tmp_path):
    from pyengine.models.checkpoint import convert_checkpoint
    from pyengine.purify import Purifier

    model, head = _trained_like()
    src = tmp_path / "fp32.safetensors"
    bank = torch.randn(32, head.out_features)
    save_checkpoint(src, model, head=head, aux={"contrastive_bank": bank}, training={"command": COMMAND})
    half = convert_checkpoint(src, tmp_path / "fp16.safetensors", published_by="the pipeline")
    stored = load_file(str(half))
    assert stored["classifier.conv1.weight"].dtype == torch.float16
    assert stored["aux.contrastive_bank"].dtype == torch.float16
    counters = [k for k, v in load_file(str(src)).items() if v.dtype == torch.int64]
    assert counters and all(stored[k].dtype == torch.int64 for k in counters)  # BN counters untouched
    assert half.stat().st_size < 0.6 * src.stat().st_size
    manifest = read_manifest(half)
    assert manifest["stored_dtype"] == "float16" and manifest["published_by"] == "the pipeline"
    assert manifest["training"]["command"] == COMMAND  # the commands that made it travel along

    ckpt = load_checkpoint(half)
    for name, tensor in [*ckpt.classifier.state_dict().items(), *ckpt.head.state_dict().items()]:
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, name
    assert ckpt.aux["contrastive_bank"].dtype == torch.float32
    assert torch.equal(ckpt.classifier.conv1.weight, model.conv1.weight.half().float())
    assert torch.equal(ckpt.aux["contrastive_bank"], bank.half().float())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ckpt.classifier(x), model(x), atol=1e-2)
    purifier = Purifier.from_checkpoint(half, steps=2)
    assert purifier.purify(x, generator=torch.Generator().manual_seed(0)).dtype == torch.float32


def test_values_beyond_fp16_are_refused_naming_the_tensor(tmp_path):
    from pyengine.models.checkpoint import convert_checkpoint

    model, _ = _trained_like()
    with torch.no_grad():
        model.fc.bias[0] = 1e6
    save_checkpoint(tmp_path / "big.safetensors", model)
    with pytest.raises(CheckpointError, match="classifier.fc.bias"):
        convert_checkpoint(tmp_path / "big.safetensors", tmp_path / "half.safetensors")
    assert not (tmp_path / "half.safetensors").exists()
    with pytest.raises(ValueError, match="dtype must be one of"):
        convert_checkpoint(tmp_path / "big.safetensors", tmp_path / "half.safetensors", dtype="int8")
