"""fp16 ONNX export with a loss scale: the step's signs survive fp16, and the scale changes no fp32 step.

Threshold. On the shipped FGSM-RS tiny checkpoint and 64 CIFAR-10 test images the fp16
gradient has the fp32 sign on 99.4 % of the pixels a step moves, 99.25 % at the worst of
the 40 steps (docs/BENCHMARKS.md, `python3 -m pyengine.deploy.sign_agreement`); the rest
are near-zero gradients whose sign fp16 rounding flips. A broken fp16 graph agrees far less:
random signs agree on half the pixels, a backward that overflows (NaN) or underflows (0)
on none of those that move. The tests ask for 97 % on a few images of a random-weight
model, whose gradients are as well scaled (measured there: 99.6 % with the torch kernels,
99.8 % read off ONNX Runtime's one-step model).
"""
import numpy as np
import onnx
import pytest
import torch

from pyengine import Purifier
from pyengine.data import ImageSet
from pyengine.deploy import OnnxPurifier, export_onnx, trace_purifier
from pyengine.deploy.graph import build_modules
from pyengine.deploy.objectives import exportable
from pyengine.deploy.precision import FP16_LOSS_SCALE, check_loss_scale
from pyengine.deploy.sign_agreement import backward_magnitudes, choose_loss_scale, measure
from pyengine.soap import ConsistencyObjective
from test_export_onnx import N, SIZE, autograd_signs, make_parts

THRESHOLD = 0.97


@pytest.fixture(scope="module")
def purifier():
    model, head, bank = make_parts()
    return Purifier(model, head, bank=bank, steps=2, precision="fp32", channels_last=False)


def test_loss_scale_changes_no_fp32_step(purifier):
    x0 = torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    xk = (x0 + 0.05 * torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    views = purifier.objective.views.draw(N, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    _, plain = build_modules(purifier, N, SIZE, SIZE)
    _, scaled = build_modules(purifier, N, SIZE, SIZE, loss_scale=2.0 ** 10)
    with torch.no_grad():
        # A power of two scales every backward value exactly: the gradient is 2^10 times
        # scale 1's to the bit, so the step (its sign) is the same to the bit.
        assert torch.equal(scaled.gradient(xk, views), plain.gradient(xk, views) * 2.0 ** 10)
        assert torch.equal(scaled(x0, xk, views), plain(x0, xk, views))


def test_fp16_export_runs_and_keeps_the_step_signs(purifier, tmp_path):
    traced = trace_purifier(purifier, N, image_size=(SIZE, SIZE), precision="fp16")
    path = export_onnx(traced, tmp_path / "step16.onnx", unrolled=False)
    model = onnx.load(str(path))
    kernels = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    types = {t.data_type for t in model.graph.initializer if t.name in kernels}
    assert kernels and types == {onnx.TensorProto.FLOAT16}  # forward and backward convolutions
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}
    runtime = OnnxPurifier(path, providers=["CPUExecutionProvider"])
    assert runtime.meta["precision"] == {"network": "fp16", "loss_scale": FP16_LOSS_SCALE,
                                         "fp32": "the iterate, the views, the loss over the bank, the projection"}
    # With x_k = x0 away from the box edges, x_next = x_k - a*sign(g) exactly: read the signs off a step.
    x = torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    views = purifier.objective.views.draw(N, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    logits, x_next = runtime.session.run(["logits", "x_next"],
                                         {"x": x.numpy(), "x_k": x.numpy(), "view_params": views.numpy()})
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    signs = np.rint((x.numpy() - x_next) / purifier.step.step_size)
    agreement = (signs == autograd_signs(purifier, x, views)).mean()
    assert agreement >= THRESHOLD, f"sign agreement {agreement:.4f}"


def test_measured_agreement_is_exact_for_fp32_and_high_for_fp16(purifier):
    gen = torch.Generator().manual_seed(0)
    data = ImageSet((torch.rand(N, 3, SIZE, SIZE, generator=gen) * 255).to(torch.uint8), torch.zeros(N, dtype=torch.long))
    report = measure(purifier, data, steps=2, batch=N, loss_scales=(1.0, 256.0), progress=False)
    assert report["results"]["fp32@256"]["agreement"] == 1.0  # along the whole trajectory
    for name in ("fp16@1", "fp16@256"):
        assert report["results"][name]["agreement_moving"] >= THRESHOLD
        assert len(report["results"][name]["per_step_agreement_moving"]) == 2
    magnitudes = report["backward_magnitudes_step1"]
    assert 0 < magnitudes["max"] < 65504 and 0 <= magnitudes["fraction_flushed"] <= magnitudes["fraction_subnormal"]


def test_backward_magnitudes_follow_the_loss(purifier):
    x = torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    views = purifier.objective.views.draw(N, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    first = backward_magnitudes(purifier, x, views)
    assert first == backward_magnitudes(purifier, x, views) and first["nonzero"] <= first["values"]


def test_choose_loss_scale():
    assert choose_loss_scale(11.8) == 256.0  # 11.8 * 256 * 16 = 48,333 <= 65,504 < 11.8 * 512 * 16
    assert choose_loss_scale(1e6) == 1.0
    with pytest.raises(ValueError, match="max_abs"):
        choose_loss_scale(0.0)


@pytest.mark.parametrize("bad", [3.0, 0.0, -2.0, 2.0 ** 30, float("inf"), float("nan")])
def test_loss_scale_must_be_a_power_of_two(bad):
    with pytest.raises(ValueError, match="power of two"):
        check_loss_scale(bad, "fp16")


def test_loss_scale_and_precision_errors(purifier):
    assert check_loss_scale(None, "fp16") == FP16_LOSS_SCALE and check_loss_scale(None, "fp32") == 1.0
    with pytest.raises(TypeError, match="loss_scale"):
        check_loss_scale("256", "fp16")
    with pytest.raises(ValueError, match="precision"):
        check_loss_scale(None, "bf16")
    with pytest.raises(ValueError, match="contrastive objective only"):
        exportable(ConsistencyObjective(purifier.classifier), precision="fp16")


def test_onnxruntime_backend_runs_the_exported_gradient(purifier):
    gen = torch.Generator().manual_seed(0)
    data = ImageSet((torch.rand(N, 3, SIZE, SIZE, generator=gen) * 255).to(torch.uint8), torch.zeros(N, dtype=torch.long))
    report = measure(purifier, data, steps=1, batch=N, loss_scales=(256.0,), backend="onnxruntime", progress=False)
    assert report["results"]["fp32@256"]["agreement"] == 1.0
    assert report["results"]["fp16@256"]["agreement_moving"] >= THRESHOLD
    graphs = report["runtime"]["graphs"]
    # The casts exported (fp32 <-> fp16 boundaries) and those of the graph ONNX Runtime ran are recorded.
    assert graphs["fp16@256"]["casts_exported"] > 0 and graphs["fp32@1"]["casts_run"] == 0


class _Tensor:
    def __init__(self, dtype):
        self.dtype = dtype


class _Layer:
    def __init__(self, *dtypes):
        self.outputs = [_Tensor(d) for d in dtypes]
        self.num_outputs = len(dtypes)

    def get_output(self, i):
        return self.outputs[i]


def test_tensorrt_build_of_an_fp16_export_pins_only_its_fp32_layers():
    from types import SimpleNamespace

    from pyengine.deploy.tensorrt import typed_fp32_layers

    trt = SimpleNamespace(float16="half", float32="float")
    layers = [_Layer("half"), _Layer("float"), _Layer("float", "half"), _Layer()]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert typed_fp32_layers(network, trt) == [layers[1], layers[3]]


def test_cli_export_onnx_takes_precision_and_loss_scale(tmp_path, monkeypatch, capsys):
    from pyengine import save_checkpoint
    from pyengine.cli import main
    from pyengine.deploy import onnx_export

    model, head, bank = make_parts()
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", model, head=head, aux={"contrastive_bank": bank})
    command = ["export", "onnx", "--checkpoint", str(ckpt), "--batch", str(N), "--image-size", str(SIZE), str(SIZE),
               "--out", str(tmp_path / "m.onnx"), "--precision", "fp16"]
    # A loss scale that is not a power of two is refused before any tracing, in one line.
    assert main([*command, "--loss-scale", "3"]) == 2
    assert "power of two" in capsys.readouterr().err
    seen = {}

    def stop(purifier, batch, **settings):  # the plumbing is what this test checks; tracing is covered above
        seen.update(settings)
        raise NotImplementedError("stopped after the plumbing")

    monkeypatch.setattr(onnx_export, "trace_purifier", stop)
    assert main([*command, "--loss-scale", "512"]) == 2
    assert seen["precision"] == "fp16" and seen["loss_scale"] == 512
