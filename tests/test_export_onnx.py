"""ONNX export of purify + classify: ONNX Runtime against the PyTorch engine with the same draws.

The engine runs on the reference ops (pure PyTorch) so the comparison does not depend on
the C++ extension. One trace of the tiny model per purifier (contrastive, SOAP rotation at
a fixed radius, SOAP consistency with min-aux) serves every test (tracing is the slow part).
"""
import importlib
import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from pyengine import Purifier, create_model, load_purifier, save_checkpoint
from pyengine.cli import main
from pyengine.deploy import OnnxPurifier, check_model, draw_view_params, export_onnx, trace_purifier
from pyengine.deploy import onnx_export
from pyengine.deploy.graph import PurifyClassify, PurifyOneStep
from pyengine.deploy.views import render_views
from pyengine.models import ContrastiveHead
from pyengine.models.aux_heads import RotationHead
from pyengine.ops import contrastive_loss_reference, sample_views_reference
from pyengine.purify import ViewSampler
from pyengine.soap import ConsistencyObjective, MinAuxPurifier, RotationObjective, aux_manifest, soap_purifier

N, SIZE, K = 2, 16, 2


@pytest.fixture(scope="module", autouse=True)
def reference_ops():
    with pytest.MonkeyPatch.context() as mp:
        for name in ("contrastive_loss", "view_sampling", "projection_step"):
            mp.setattr(importlib.import_module(f"pyengine.ops.{name}"), "use_fused", lambda *t: False)
        yield


def make_parts():
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    head = ContrastiveHead(model.num_features, 64, 16)
    with torch.no_grad():
        for m in [*model.modules(), *head.modules()]:
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):  # non-trivial statistics to fold
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, head, torch.randn(64, 16)


@pytest.fixture(scope="module")
def purifier():
    model, head, bank = make_parts()
    return Purifier(model, head, bank=bank, steps=K)


@pytest.fixture(scope="module")
def traced(purifier):
    return trace_purifier(purifier, N, image_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def models(traced, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {"unrolled": export_onnx(traced, out / "unrolled.onnx", K),
            "one_step": export_onnx(traced, out / "one_step.onnx", K, unrolled=False)}


def images(seed=0):
    x = torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x[0, :, :3, :3], x[1, :, -3:, -3:] = 0.0, 1.0  # pixels on the box edges and clamped views
    return x


def engine_draws(purifier, seed):
    """The draws Purifier.purify makes with generator(seed): the start, then one set of views per step."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(N, 3, SIZE, SIZE, generator=g) * 2 - 1) * purifier.step.eps
    views = torch.stack([purifier.objective.views.draw(N, SIZE, SIZE, generator=g) for _ in range(K)])
    return noise.numpy(), {"view_params": views.numpy()}


@pytest.mark.parametrize("form", ["unrolled", "one_step"])
def test_onnx_runtime_matches_the_engine(purifier, models, form):
    x = images()
    expected = purifier.purify(x, generator=torch.Generator().manual_seed(3))
    expected_logits = purifier.classifier(expected)
    noise, randoms = engine_draws(purifier, 3)
    got = OnnxPurifier(models[form], providers=["CPUExecutionProvider"]).purify(
        x.numpy(), start_noise=noise, randoms=randoms)
    assert np.abs(got.images - expected.numpy()).max() <= 1e-4
    assert np.abs(got.logits - expected_logits.numpy()).max() <= 1e-4
    assert (got.logits.argmax(1) == expected_logits.argmax(1).numpy()).all()


def test_torch_purify_classify_module_matches_the_engine(purifier, traced):
    x = images(2)
    expected = purifier.purify(x, generator=torch.Generator().manual_seed(9))
    noise, randoms = engine_draws(purifier, 9)
    module = PurifyClassify(purifier.classifier, traced.step, K)
    logits, purified = module(x, torch.from_numpy(noise), torch.from_numpy(randoms["view_params"]))
    assert torch.equal(purified, expected)
    assert torch.equal(logits, purifier.classifier(expected))
    x_next_logits, x_next = PurifyOneStep(purifier.classifier, traced.step)(
        x, (x + torch.from_numpy(noise)).clamp(0, 1), torch.from_numpy(randoms["view_params"][0]))
    assert x_next.shape == x.shape and x_next_logits.shape == (N, 10)


def test_gradient_signs_agree_with_autograd(purifier, models):
    # With x_k = x0 away from the box edges, x_next = x_k - a*sign(g) exactly: read ORT's signs off a step.
    a = purifier.step.step_size
    x = torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    views = purifier.objective.views.draw(N, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    session = OnnxPurifier(models["one_step"], providers=["CPUExecutionProvider"]).session
    _, x_next = session.run(["logits", "x_next"], {"x": x.numpy(), "x_k": x.numpy(), "view_params": views.numpy()})
    ort_sign = np.rint((x.numpy() - x_next) / a)
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        z = purifier.objective.embed(sample_views_reference(xr, views, SIZE, SIZE))
        loss = contrastive_loss_reference(z, purifier.objective.views.n_views, purifier.objective.temperature,
                                          purifier.objective.bank)
        grad, = torch.autograd.grad(loss.sum(), xr)
    agreement = (ort_sign == grad.sign().numpy()).mean()
    assert agreement >= 0.999, f"sign agreement {agreement:.5f}"


def test_render_views_equals_the_reference():
    x = images(1)
    params = ViewSampler(n_views=3).draw(N, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert torch.equal(render_views(x, params, SIZE, SIZE), sample_views_reference(x, params, SIZE, SIZE))


@pytest.mark.parametrize("version", ["8.5", "8.6", "10.3"])
def test_exported_models_pass_the_tensorrt_check(models, version):
    for path in models.values():
        report = check_model(path, version)
        assert report.ok, report.summary()
        assert onnx.load(str(path)).opset_import[0].version == 17


def test_the_check_fails_on_planted_problems(models, tmp_path):
    model = onnx.load(str(models["one_step"]))
    model.graph.node.append(helper.make_node("Unique", ["x"], ["planted"], name="planted_unique"))
    model.graph.node.append(helper.make_node("Shape", ["x"], ["planted_axes"], name="planted_shape"))
    model.graph.node.append(helper.make_node("ReduceSum", ["x", "planted_axes"], ["planted_sum"], name="planted_sum"))
    model.graph.node.append(helper.make_node("Foo", ["x"], ["planted_foo"], name="planted_foo", domain="com.example"))
    report = check_model(model, "8.6")
    assert not report.ok
    text = "\n".join(report.problems)
    assert "Unique is not supported by TensorRT 8.6" in text
    assert "planted_sum: input 1 (planted_axes) must be an initializer" in text
    assert "domain 'com.example'" in text
    model.opset_import[0].version = 18
    assert any("opset 18 outside" in p for p in check_model(model, "8.5").problems)
    path = tmp_path / "planted.onnx"
    onnx.save(model, str(path))
    assert main(["export", "check", "--onnx", str(path), "--trt", "8.6"]) == 1
    with pytest.raises(ValueError, match="no TensorRT 7.1 operator list"):
        check_model(model, "7.1")


def test_sidecar_and_runtime_draws(models):
    meta = json.loads(models["unrolled"].with_suffix(".json").read_text())
    assert meta["steps"] == K and meta["batch"] == N and meta["opset"] == 17 and meta["form"] == "unrolled"
    assert meta["objective"]["name"] == "contrastive" and meta["objective"]["view_sampler"]["n_views"] == 4
    assert [i["name"] for i in meta["inputs"]] == ["x", "start_noise", "view_params"]
    runtime = OnnxPurifier(models["one_step"], seed=0, steps=3)
    x = images().numpy()
    first, again = runtime.purify(x), OnnxPurifier(models["one_step"], seed=0, steps=3).purify(x)
    np.testing.assert_array_equal(first.images, again.images)
    assert np.abs(first.images - x).max() <= meta["step"]["eps"] + 1e-6
    assert first.logits.shape == (N, 10) and runtime(x).shape == (N, 10)


def test_host_sampler_matches_the_view_sampler_distributions():
    settings = json.loads(json.dumps(ViewSampler().__dict__))
    ours = draw_view_params(np.random.default_rng(0), 2000, 32, 32, settings)
    theirs = ViewSampler().draw(2000, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=0.02)
    np.testing.assert_allclose(ours.std(0), theirs.std(0), atol=0.02)
    assert (ours[:, 2:4] <= 1).all() and (ours[:, 0] + ours[:, 2] <= 1 + 1e-6).all()


@pytest.mark.parametrize("bad, error, match", [
    (lambda x: x.astype(np.float64), TypeError, "dtype float32, got float64"),
    (lambda x: (x * 255).astype(np.uint8), TypeError, "uint8 images"),
    (lambda x: x[:1], ValueError, r"shape \(2, 3, 16, 16\).*got \(1, 3, 16, 16\)"),
    (lambda x: x * 2, ValueError, r"must lie in \[0, 1\]"),
    (lambda x: np.where(x > 0.5, np.nan, x).astype(np.float32), ValueError, "NaN"),
    (lambda x: x.tolist(), TypeError, "numpy.ndarray"),
])
def test_runtime_rejects_bad_input(models, bad, error, match):
    with pytest.raises(error, match=match):
        OnnxPurifier(models["unrolled"]).purify(bad(images().numpy()))


def test_runtime_rejects_bad_draws_and_steps(models):
    runtime = OnnxPurifier(models["unrolled"])
    x = images().numpy()
    with pytest.raises(ValueError, match="view_params must be float32"):
        runtime.purify(x, start_noise=np.zeros_like(x), randoms={"view_params": np.zeros((K, 4, 10), np.float32)})
    with pytest.raises(ValueError, match="unrolled model runs K=2"):
        OnnxPurifier(models["unrolled"], steps=5)


def test_cli_export_onnx_from_a_checkpoint(traced, tmp_path, monkeypatch, capsys):
    model, head, bank = make_parts()
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", model, head=head, aux={"contrastive_bank": bank})

    def reuse(purifier, batch, *, image_size, opset):  # tracing is covered above; this test checks the plumbing
        assert (batch, tuple(image_size), opset) == (N, (SIZE, SIZE), 17)
        return onnx_export.TracedPurifier(purifier, traced.objective, N, (SIZE, SIZE), 17, traced.step_model,
                                          traced.classify_model, traced.random_shapes, traced.step)

    monkeypatch.setattr(onnx_export, "trace_purifier", reuse)
    out = tmp_path / "cli.onnx"
    main(["export", "onnx", "--checkpoint", str(ckpt), "--steps", "3", "--batch", str(N), "--opset", "17",
          "--image-size", str(SIZE), str(SIZE), "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 3 and meta["source"]["checkpoint"].endswith("tiny.safetensors")
    purifier = Purifier.from_checkpoint(ckpt, steps=3, image_size=None)  # exported at SIZE, not the model's 32
    x = images(4)
    expected = purifier.purify(x, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    noise = ((torch.rand(x.shape, generator=g) * 2 - 1) * purifier.step.eps).numpy()
    views = np.stack([purifier.objective.views.draw(N, SIZE, SIZE, generator=g).numpy() for _ in range(3)])
    got = OnnxPurifier(out).purify(x.numpy(), start_noise=noise, randoms={"view_params": views})
    assert np.abs(got.images - expected.numpy()).max() <= 1e-4


def test_cli_tensorrt_without_tensorrt_prints_what_to_install(models, tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert main(["export", "tensorrt", "--onnx", str(models["unrolled"]), "--fp16", "--out",
                 str(tmp_path / "m.plan")]) == 3
    err = capsys.readouterr().err
    assert "pip install tensorrt" in err and "python3-libnvinfer" in err and "Traceback" not in err


# SOAP (Shi et al.): deterministic objectives, zero init; min-aux as one graph.
SOAP_EPS, SOAP_T = 8 / 255, 2


def make_soap_parts():
    model = make_parts()[0]
    torch.manual_seed(1)
    return model, RotationHead(model.num_features)


@pytest.fixture(scope="module")
def soap_traced():
    model, head = make_soap_parts()
    purifier = soap_purifier(model, RotationObjective(model, head), eps=SOAP_EPS, steps=SOAP_T)
    return trace_purifier(purifier, N, image_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def min_aux_traced():
    model = make_parts()[0]  # 2 steps of 4/255 reach 8/255: radius 3 (12/255) is the last distinct, 4 repeats it
    purifier = MinAuxPurifier(model, ConsistencyObjective(model), n_radii=4, steps=2)
    return trace_purifier(purifier, N, image_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def soap_models(soap_traced, min_aux_traced, tmp_path_factory):
    out = tmp_path_factory.mktemp("soap_onnx")
    return {"unrolled": export_onnx(soap_traced, out / "rotation.onnx"),
            "one_step": export_onnx(soap_traced, out / "rotation_step.onnx", unrolled=False),
            "min_aux": export_onnx(min_aux_traced, out / "consistency_min_aux.onnx")}


@pytest.fixture(scope="module")
def soap_expected(soap_traced):
    """The engine's purification of images(1) and its logits (deterministic: no random draws)."""
    purifier = soap_traced.purifier
    expected = purifier.purify(images(1))
    return expected, purifier.classifier(expected)


@pytest.mark.parametrize("form", ["unrolled", "one_step"])
def test_soap_onnx_runtime_matches_the_engine(soap_models, soap_expected, form):
    x, (expected, expected_logits) = images(1), soap_expected
    got = OnnxPurifier(soap_models[form], providers=["CPUExecutionProvider"], seed=0).purify(x.numpy())
    assert (expected - x).abs().max() > 2 / 255  # the purification moved the images
    assert np.abs(got.images - expected.numpy()).max() <= 1e-4
    assert np.abs(got.logits - expected_logits.numpy()).max() <= 1e-4
    assert (got.logits.argmax(1) == expected_logits.argmax(1).numpy()).all()
    meta = json.loads(soap_models[form].with_suffix(".json").read_text())
    assert meta["objective"] == {"name": "rotation", "aux_task": "rotation"} and meta["random_inputs"] == {}
    assert meta["step"]["random_start"] is False and meta["selection"] is None


def test_soap_min_aux_onnx_matches_the_engine(min_aux_traced, soap_models):
    purifier, x = min_aux_traced.purifier, images(3)
    expected = purifier.purify(x, return_choice=True)
    expected_logits = purifier.classifier(expected.images)
    session = OnnxPurifier(soap_models["min_aux"], providers=["CPUExecutionProvider"]).session
    logits, purified, radius = session.run(["logits", "purified", "radius"], {"x": x.numpy()})
    assert np.abs(purified - expected.images.numpy()).max() <= 1e-4
    assert np.abs(logits - expected_logits.numpy()).max() <= 1e-4
    assert (logits.argmax(1) == expected_logits.argmax(1).numpy()).all()
    np.testing.assert_allclose(radius, expected.eps.numpy(), rtol=1e-6)
    got = OnnxPurifier(soap_models["min_aux"]).purify(x.numpy())  # the runtime feeds x alone
    np.testing.assert_array_equal(got.images, purified)
    meta = json.loads(soap_models["min_aux"].with_suffix(".json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["x"] and meta["objective"]["name"] == "consistency"
    assert meta["selection"]["method"] == "min-aux" and len(meta["selection"]["radii"]) == 4
    with pytest.raises(ValueError, match="no one-step form"):
        export_onnx(min_aux_traced, soap_models["min_aux"].with_name("bad.onnx"), unrolled=False)


@pytest.mark.parametrize("version", ["8.5", "8.6", "10.3"])
def test_exported_soap_models_pass_the_tensorrt_check(soap_models, version):
    for path in soap_models.values():
        report = check_model(path, version)
        assert report.ok, report.summary()


def test_cli_export_onnx_from_a_soap_checkpoint(soap_traced, min_aux_traced, tmp_path, monkeypatch, capsys):
    model, head = make_soap_parts()
    rotation = save_checkpoint(tmp_path / "rot.safetensors", model, aux={"rotation": head},
                               **aux_manifest("rotation", 0.5, 0.1, head))
    consistency = save_checkpoint(tmp_path / "con.safetensors", model, **aux_manifest("consistency", 1.0, 0.1, None))

    def reuse(purifier, batch, *, image_size, opset):  # tracing is covered above; this test checks the plumbing
        traced = min_aux_traced if isinstance(purifier, MinAuxPurifier) else soap_traced
        return onnx_export.TracedPurifier(purifier, *[getattr(traced, f) for f in (
            "objective", "batch", "size", "opset", "step_model", "classify_model", "random_shapes", "step",
            "loss_model")])

    monkeypatch.setattr(onnx_export, "trace_purifier", reuse)
    common = ["--batch", str(N), "--image-size", str(SIZE), str(SIZE)]
    out = tmp_path / "rot.onnx"
    main(["export", "onnx", "--checkpoint", str(rotation), "--soap-eps", str(SOAP_EPS), "--steps", str(SOAP_T),
          "--one-step", "--out", str(out), *common])
    assert "one step" in capsys.readouterr().out
    x = images(4)
    expected = load_purifier(rotation, soap_eps=SOAP_EPS, steps=SOAP_T, image_size=None).purify(x)
    got = OnnxPurifier(out, steps=SOAP_T).purify(x.numpy())
    assert np.abs(got.images - expected.numpy()).max() <= 1e-4
    out = tmp_path / "con.onnx"
    main(["export", "onnx", "--checkpoint", str(consistency), "--steps", "2", "--out", str(out), *common])
    assert "min-aux" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["selection"]["method"] == "min-aux"
    for bad, match in ((["--one-step"], "no one-step form"), (["--eps-v", "0.1"], "pass --soap-eps")):
        assert main(["export", "onnx", "--checkpoint", str(consistency), "--out", str(out), *bad, *common]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
