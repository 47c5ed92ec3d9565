"""Model sources: registry names, timm:/torchvision: with local weights, .pt2 and TorchScript files."""
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pyengine.models import sources
from pyengine.models.sources import ModelSourceError, load_model, parse_source


def need(library: str):
    try:
        return getattr(sources, f"import_{library}")()
    except ImportError as err:
        pytest.skip(str(err))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).eval()


@pytest.fixture(scope="module")
def timm_resnet(tmp_path_factory):
    timm = need("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    path = tmp_path_factory.mktemp("timm") / "resnet18.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


@pytest.mark.parametrize("source,expected", [
    ("preact_resnet_tiny", ("registry", "preact_resnet_tiny")), ("timm:resnet18", ("timm", "resnet18")),
    ("torchvision:resnet50", ("torchvision", "resnet50")), ("model.pt2", ("exported", "model.pt2")),
    ("scripted.pt", ("torchscript", "scripted.pt")),
])
def test_parse_source(source, expected):
    assert parse_source(source) == expected


def test_unknown_prefix_and_names():
    with pytest.raises(ModelSourceError, match="unknown model source prefix 'hub'"):
        parse_source("hub:resnet18")
    with pytest.raises(ModelSourceError, match="did you mean preact_resnet_tiny"):
        load_model("preact_resnet_tiyn")


def test_timm_names_weights_and_normalisation(timm_resnet, tmp_path):
    model, path = timm_resnet
    with pytest.raises(ModelSourceError, match="unknown timm model 'resnet81'.*resnet18"):
        load_model("timm:resnet81", weights=path)
    with pytest.raises(ModelSourceError, match="give the weights file"):
        load_model("timm:resnet18")
    with pytest.raises(ModelSourceError, match="weights file not found"):
        load_model("timm:resnet18", weights=tmp_path / "absent.safetensors")
    with pytest.raises(ModelSourceError, match="do not fit ResNet: missing layer1.0.conv3.weight"):
        load_model("timm:resnet50", weights=path)  # bottleneck blocks: more tensors than resnet18's
    wrapped = load_model("timm:resnet18", weights=path, image_size=48)
    assert wrapped.record["num_classes"] == 7 and wrapped.record["num_features"] == 512
    assert wrapped.record["normalization"] == {"mean": list(sources.IMAGENET_MEAN), "std": list(sources.IMAGENET_STD)}
    x = torch.rand(2, 3, 48, 48)
    mean, std = torch.tensor(sources.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(sources.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model((x - mean) / std))
        # The input of the last Linear is the pooled output of layer4.
        by_layer = load_model("timm:resnet18", weights=path, layer="layer4", image_size=48)
        torch.testing.assert_close(wrapped.forward_features(x), by_layer.forward_features(x))
        pre_logits = model.forward_head(model.forward_features((x - mean) / std), pre_logits=True)
        torch.testing.assert_close(wrapped.forward_features(x), pre_logits)
    with pytest.raises(ModelSourceError, match="unknown layer 'layer5'.*layer4"):
        load_model("timm:resnet18", weights=path, layer="layer5")
    own = load_model("timm:resnet18", weights=path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=32)
    assert own.record["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}


def test_torchvision_state_dict_file(tmp_path):
    tv = need("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=3).eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    wrapped = load_model("torchvision:resnet18", weights=tmp_path / "w.pth", image_size=32)
    x = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(sources.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(sources.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model((x - mean) / std))
    assert wrapped.record["feature_layer"] == {"name": None, "hooked": "fc", "read": "input"}
    with pytest.raises(ModelSourceError, match="unknown torchvision model 'resnet_18'.*resnet18"):
        load_model("torchvision:resnet_18", weights=tmp_path / "w.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(ModelSourceError, match="cannot read weights"):
        load_model("torchvision:resnet18", weights=tmp_path / "bad.pth")


def test_exported_program(tmp_path):
    net = tiny_net()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "net.pt2")
    model = load_model(str(tmp_path / "net.pt2"), image_size=16)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
        torch.testing.assert_close(model.forward_features(x), net[:7](x))  # the input of the last Linear
    assert model.record["num_features"] == 6 and model.record["kind"] == "exported"
    model.eval().requires_grad_(False)  # every purifier calls these; an exported module refuses eval()
    with pytest.raises(ModelSourceError, match="no node 'nope'"):
        load_model(str(tmp_path / "net.pt2"), layer="nope")
    fixed = torch.export.export(net, (torch.rand(2, 3, 16, 16),))
    torch.export.save(fixed, tmp_path / "fixed.pt2")
    with pytest.raises(ModelSourceError, match="dynamic batch dimension"):
        load_model(str(tmp_path / "fixed.pt2"), image_size=16)
    with pytest.raises(ModelSourceError, match="holds its own weights"):
        load_model(str(tmp_path / "net.pt2"), weights=tmp_path / "net.pt2")


def test_torchscript(timm_resnet, tmp_path):
    model, _ = timm_resnet
    torch.jit.script(model).save(str(tmp_path / "resnet.pt"))
    wrapped = load_model(str(tmp_path / "resnet.pt"), image_size=32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(x))
        torch.testing.assert_close(wrapped.forward_features(x), model.forward_features(x).mean((2, 3)))
    torch.jit.script(tiny_net()).save(str(tmp_path / "plain.pt"))
    with pytest.raises(ModelSourceError, match="forward_features and forward_head"):
        load_model(str(tmp_path / "plain.pt"))


def test_torchvision_import_survives_a_cuda_wheel():
    """On a CPU torch, PyPI's (CUDA) torchvision wheel fails to import by itself; through
    import_torchvision its models build."""
    tv = need("torchvision")
    assert tv.models.get_model("resnet18", weights=None, num_classes=2).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 2)


def test_hooked_features_reads_a_layers_input():
    from pyengine.models import HookedFeatures

    net = tiny_net()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(HookedFeatures(net, "7", read="input").forward_features(x), net[:7](x))
        torch.testing.assert_close(HookedFeatures(net, "7").forward_features(x), net(x))
    with pytest.raises(ValueError, match="read must be 'output' or 'input'"):
        HookedFeatures(net, "7", read="inputs")


def test_registry_source_with_checkpoint_weights(tmp_path):
    from pyengine.models import create_model
    from pyengine.models.checkpoint import save_checkpoint

    torch.manual_seed(1)
    trained = create_model("preact_resnet_tiny").eval()
    save_checkpoint(tmp_path / "c.safetensors", trained)
    loaded = load_model("preact_resnet_tiny", weights=tmp_path / "c.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))
