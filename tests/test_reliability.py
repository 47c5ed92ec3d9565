"""Fault injection: the cases of issue 20 ("never a wrong result"), each reproduced the way a
user or a fault would cause it. Each test failed on the code before the fix; the catalogue of
cases tried, with their outcomes (including those that already held), is docs/RELIABILITY.md.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
import shutil
import struct
import threading
import time
import zipfile
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from pyengine import Purifier, cli, create_model, load_purifier, save_checkpoint
from pyengine.attacks import build_attack
from pyengine.batch import ImageSource
from pyengine.data import CIFAR10_CLASSES, DataError, load_cifar10
from pyengine.errors import NonFiniteError
from pyengine.models import CheckpointError, ContrastiveHead, load_checkpoint
from pyengine.models.aux_heads import RotationHead
from pyengine.resume import RunFolderError, claim
from pyengine.soap import aux_manifest
from pyengine.train import ClassifierTrainConfig, train_classifier

PURIFY = ["--steps", "1", "--batch-size", "2", "--threads", "1"]
EVAL = ["--attacks", "fgsm", "--n", "3", "--batch-size", "3", "--steps", "1", "--threads", "1"]


def _checkpoint(path, seed: int, **parts):
    torch.manual_seed(seed)
    model = create_model("preact_resnet_tiny").eval()
    if not parts:
        parts = {"head": ContrastiveHead(model.num_features, 16, 8), "aux": {"contrastive_bank": torch.randn(16, 8)}}
    return save_checkpoint(path, model, **parts)


def _images(folder, seed: int, names=("0.png", "1.png", "2.png"), *, classes: bool = True):
    """Random 32x32 PNGs, in a CIFAR-10 class folder each (so they carry labels) or at the top."""
    pixels = np.random.default_rng(seed).integers(0, 256, (len(names), 32, 32, 3), dtype=np.uint8)
    for name, image in zip(names, pixels):
        target = folder / CIFAR10_CLASSES[len(name) % 10] / name if classes else folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two tiny contrastive checkpoints, a SOAP (rotation) one, and two image folders whose
    files have the same names but other pixels."""
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(2)
    soap_model = create_model("preact_resnet_tiny").eval()
    head = RotationHead(soap_model.num_features)
    soap = save_checkpoint(root / "soap.safetensors", soap_model, aux={"rotation": head},
                           **aux_manifest("rotation", 0.5, 0.1, head))
    return SimpleNamespace(root=root, checkpoint=_checkpoint(root / "a.safetensors", 0),
                           other=_checkpoint(root / "b.safetensors", 1), soap=soap,
                           a=_images(root / "a", 0), b=_images(root / "b", 1))


def run_cli(capsys, *args) -> tuple[int, str]:
    """``pyengine ARGS`` in-process: (exit status, stderr); argparse's own exit included."""
    threads = torch.get_num_threads()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


def user_error(capsys, *args) -> str:
    """Run a command that must fail as a user error: exit 2, one ``error:`` line, no traceback."""
    code, err = run_cli(capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"pyengine {args[0]}") and "error:" in last, err
    return last


def purify(work, source, out, checkpoint=None, *extra) -> list:
    return ["purify", source, "--checkpoint", checkpoint or work.checkpoint, *PURIFY, "--out", out, *extra]


# 1. Run folders keyed by content; outputs checked on resume.

def test_1_a_rerun_with_other_inputs_weights_or_data_is_refused_naming_what_changed(work, tmp_path, capsys):
    assert run_cli(capsys, *purify(work, work.a, tmp_path / "p"))[0] == 0
    assert "inputs_sha256" in user_error(capsys, *purify(work, work.b, tmp_path / "p"))  # same names, other bytes

    ckpt = tmp_path / "model.safetensors"
    shutil.copy(work.checkpoint, ckpt)
    assert run_cli(capsys, *purify(work, work.a, tmp_path / "q", ckpt))[0] == 0
    moved = tmp_path / "moved.safetensors"
    shutil.copy(ckpt, moved)  # the same weights elsewhere: keyed by content, so the run resumes
    assert run_cli(capsys, *purify(work, work.a, tmp_path / "q", moved))[0] == 0
    shutil.copy(work.other, ckpt)  # replaced at the same path
    assert "weights_sha256" in user_error(capsys, *purify(work, work.a, tmp_path / "q", ckpt))

    evaluate = ["eval", "--checkpoint", work.checkpoint, *EVAL, "--out", tmp_path / "e"]
    assert run_cli(capsys, *evaluate, "--data", work.a)[0] == 0
    assert "data_sha256" in user_error(capsys, *evaluate, "--data", work.b)


def test_1_outputs_are_checked_not_assumed_on_resume(work, tmp_path, capsys):
    out = tmp_path / "p"
    assert run_cli(capsys, *purify(work, work.a, out))[0] == 0
    predictions, pngs = (out / "predictions.csv").read_bytes(), sorted((out / "images").rglob("*.png"))
    first = pngs[0].read_bytes()
    pngs[0].unlink()  # a deleted output
    (out / "parts" / "batch_00001.json").write_text('{"digest": ')  # a corrupt part
    assert run_cli(capsys, *purify(work, work.a, out))[0] == 0
    assert pngs[0].read_bytes() == first and (out / "predictions.csv").read_bytes() == predictions

    out = tmp_path / "e"
    evaluate = ["eval", "--checkpoint", work.checkpoint, *EVAL, "--data", work.a, "--out", out]
    assert run_cli(capsys, *evaluate)[0] == 0
    results = json.loads((out / "results.json").read_text())["attacks"]
    (out / "units" / "fgsm__00000.json").write_text("not json")
    assert run_cli(capsys, *evaluate)[0] == 0
    assert json.loads((out / "results.json").read_text())["attacks"] == results


# 2. --eps-v is refused for SOAP checkpoints by every command, as `export onnx` refuses it.

@pytest.mark.parametrize("command", ["purify", "eval", "demo"])
def test_2_eps_v_is_refused_for_a_soap_checkpoint(work, tmp_path, capsys, command):
    with pytest.raises(ValueError, match="SOAP checkpoint, whose min-aux selection picks each image's radius"):
        load_purifier(work.soap, eps_v=2 / 255)
    args = {"purify": purify(work, work.a, tmp_path / "p", work.soap),
            "eval": ["eval", "--checkpoint", work.soap, *EVAL, "--data", work.a, "--out", tmp_path / "e"],
            "demo": ["demo", "--checkpoint", work.soap, "--n", "2", "--data", work.a, "--threads", "1"]}[command]
    assert "--eps-v" in user_error(capsys, *args, "--eps-v", "2/255")
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


# 3. Non-finite values stop work where they first appear.

def test_3_a_nan_training_loss_stops_at_its_step(tmp_path):
    data = load_cifar10(_images(tmp_path / "data", 3, [f"{i}.png" for i in range(8)]), "train")
    with pytest.raises(NonFiniteError, match=r"training loss at epoch 1, step 2 \(lr nan\) is nan"):
        train_classifier(create_model("preact_resnet_tiny"), data, tmp_path / "nan.safetensors",
                         ClassifierTrainConfig(epochs=1, batch_size=4, lr=float("nan")), progress=False)
    assert not (tmp_path / "nan.safetensors").exists()


def test_3_nan_in_a_checkpoint_a_bank_or_a_purification_loss_is_refused(work, tmp_path):
    tensors = load_file(str(work.checkpoint))
    with safe_open(str(work.checkpoint), framework="pt") as f:
        metadata = f.metadata()
    tensors["classifier.fc.weight"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="classifier.fc.weight holds NaN"):
        load_checkpoint(tmp_path / "nan.safetensors")

    ckpt = load_checkpoint(work.checkpoint)
    bank = ckpt.aux["contrastive_bank"].clone()
    bank[3, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="bank of negatives holds NaN"):
        Purifier(ckpt.classifier, ckpt.head, bank=bank)

    class Broken(torch.nn.Module):  # an objective whose loss turns NaN for image 1
        def forward(self, x, *, generator=None):
            return x.mean((1, 2, 3)) * torch.tensor([1.0, float("nan")])

    purifier = Purifier(ckpt.classifier, objective=Broken(), steps=2)
    with pytest.raises(NonFiniteError, match="at iterate 0 .* for image 1"):
        purifier.purify(torch.rand(2, 3, 32, 32))


# 4. 16-bit grayscale and transparent images decode to what they show.

def test_4_sixteen_bit_grayscale_and_alpha_images_decode_correctly(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 0x8000, np.uint16)).save(folder / "gray16.png")
    assert Image.open(folder / "gray16.png").mode == "I;16"
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(folder / "transparent.png")  # black under alpha 0
    Image.new("LA", (32, 32), (0, 128)).save(folder / "half.png")  # black at alpha 128 over white
    expected = {"gray16.png": 128, "half.png": 127, "transparent.png": 255}
    source = ImageSource.open(tmp_path)
    pixels = source.read(0, len(source))
    assert {p.split("/")[-1]: int(x[0, 0, 0]) for p, x in zip(source.paths, pixels)} == expected
    assert sorted(int(v) for v in load_cifar10(tmp_path, "test").images[:, :, 0, 0].flatten()) == \
        sorted(v for v in expected.values() for _ in range(3))


# 5. The run-folder claim is exclusive.

def test_5_two_runs_racing_for_one_folder_cannot_both_pass_the_guard(tmp_path, monkeypatch):
    exists = pathlib.Path.exists

    def slow_exists(self, *args, **kwargs):  # a slow file system widens any check-then-write window
        found = exists(self, *args, **kwargs)
        time.sleep(0.02)
        return found

    monkeypatch.setattr(pathlib.Path, "exists", slow_exists)
    for round_ in range(4):
        out, start, refused = tmp_path / str(round_), threading.Barrier(2), []

        def run(seed):
            start.wait()
            try:
                claim(out, f"digest{seed}", {"seed": seed})
            except RunFolderError:
                refused.append(seed)

        threads = [threading.Thread(target=run, args=(seed,)) for seed in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winner = json.loads((out / "config.json").read_text())["seed"]
        assert refused == [1 - winner], f"round {round_}: refused {refused}, config.json holds seed {winner}"


# 6. Zip members have a size cap.

def test_6_an_oversized_zip_member_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import pyengine.data

    monkeypatch.setattr(pyengine.data, "MAX_MEMBER_BYTES", 1 << 20, raising=False)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/bomb.png", bytes(2 << 20))  # 2 MiB of zeros, a few kB compressed
    assert archive.stat().st_size < 20_000
    with pytest.raises(DataError, match="cat/bomb.png is 2097152 bytes uncompressed, larger than the 1048576"):
        ImageSource.open(archive).read(0, 1)
    with pytest.raises(DataError, match="larger than the 1048576 bytes"):
        load_cifar10(archive, "test")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "big" / "cat" / "huge.png"  # a 20000 x 20000 header over no pixels
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    for read in (lambda: ImageSource.open(bomb.parent.parent).check_sizes(None),
                 lambda: load_cifar10(bomb.parent.parent, "test")):
        with pytest.raises(DataError, match="huge.png: Image size .* could be decompression bomb"):
            read()


# 7. Training resume (the lead's fix): settings are compared, the state file is written atomically.

def test_7_training_resume_refuses_changed_settings_and_survives_a_kill_mid_write(tmp_path, monkeypatch):
    import pyengine.train

    data = load_cifar10(_images(tmp_path / "data", 4, [f"{i}.png" for i in range(4)]), "train")
    out, config = tmp_path / "m.safetensors", ClassifierTrainConfig(epochs=2, batch_size=4, lr=0.05)
    save, calls = torch.save, []

    class Killed(BaseException):
        """SIGKILL, as far as the training loop can tell: nothing after it runs."""

    def killed_on_the_second_save(state, target, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2: half a file, then the process dies
            with open(target, "wb") if isinstance(target, (str, pathlib.Path)) else contextlib.nullcontext(target) as f:
                f.write(b"PK\x03\x04 truncated")
            raise Killed
        return save(state, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_on_the_second_save)
    with pytest.raises(Killed):
        train_classifier(create_model("preact_resnet_tiny"), data, out, config, progress=False)
    monkeypatch.setattr(torch, "save", save)
    resume = pyengine.train._resume_path(out)
    assert torch.load(resume, weights_only=True)["epoch"] == 1  # the previous epoch's state, whole
    with pytest.raises(ValueError, match=r"other settings: lr \(0.05 there, 0.1 now\)"):
        train_classifier(create_model("preact_resnet_tiny"), data, out,
                         ClassifierTrainConfig(epochs=2, batch_size=4, lr=0.1), progress=False)
    train_classifier(create_model("preact_resnet_tiny"), data, out, config, progress=False)
    assert out.is_file() and not resume.exists()


# 8. One error policy: a user error is one line and exit status 2, every number bounded.

@pytest.mark.parametrize("flags", [
    ["--steps", "-1"], ["--steps", "99999"], ["--batch-size", "0"], ["--threads", "-2"], ["--seed", "-1"],
    ["--seed", str(2**70)], ["--eps-v", "1e400"], ["--eps-v", "2"], ["--device", "gpu"],
])
def test_8_bad_numbers_and_devices_are_one_line_errors(work, tmp_path, capsys, flags):
    user_error(capsys, *purify(work, work.a, tmp_path / "p"), *flags)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("command, flags", [
    ("demo", ["--n", "0"]), ("demo", ["--attack-steps", "0"]), ("eval", ["--figures", "-1"]),
    ("train-head", ["--views", "1"]), ("train-head", ["--batch-size", "1"]),
    ("export", ["--opset", "99"]), ("export", ["--steps", "0"]),
])
def test_8_every_command_bounds_its_numbers(work, tmp_path, capsys, command, flags):
    common = ["--checkpoint", work.checkpoint, "--threads", "1"]
    args = {"demo": ["demo", *common, "--data", work.a, "--n", "2", "--steps", "1", "--attack-steps", "1"],
            "eval": ["eval", *common, *EVAL, "--data", work.a, "--out", tmp_path / "e"],
            "train-head": ["train-head", *common, "--data", work.a, "--epochs", "1", "--out", tmp_path / "h"],
            "export": ["export", "onnx", "--checkpoint", work.checkpoint, "--out", tmp_path / "m.onnx"]}[command]
    user_error(capsys, *args, *flags)
    assert not list(tmp_path.iterdir())
    user_error(capsys, "bench", tmp_path / "f.json", "--peak-tflops", "inf")


def test_8_train_refuses_a_nan_learning_rate_before_it_writes_a_nan_checkpoint(work, tmp_path, capsys):
    user_error(capsys, "train-classifier", "--lr", "nan", "--epochs", "1", "--batch-size", "2", "--limit", "2",
               "--test-limit", "2", "--data", work.a, "--out", tmp_path / "m.safetensors", "--threads", "1")
    assert not (tmp_path / "m.safetensors").exists()


def test_8_run_environment_errors_are_one_line(work, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "CUDA is not available" in user_error(capsys, *purify(work, work.a, tmp_path / "p"), "--device", "cuda")
    (tmp_path / "file").write_text("")
    assert "is a file" in user_error(capsys, *purify(work, work.a, tmp_path / "file"))
    assert "cannot create" in user_error(capsys, *purify(work, work.a, tmp_path / "file" / "sub"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{")
    os.utime(tmp_path / "corrupt" / "config.json", (0, 0))  # not a claim being written right now
    assert "corrupt" in user_error(capsys, *purify(work, work.a, tmp_path / "corrupt"))
    head = ContrastiveHead(64, 16, 8)  # the classifier gives 128 features
    wide = _checkpoint(tmp_path / "wide.safetensors", 0, head=head, aux={"contrastive_bank": torch.randn(4, 8)})
    assert "head takes 64 features" in user_error(capsys, *purify(work, work.a, tmp_path / "w", wide))


def test_8_a_symlink_inside_out_is_not_followed(work, tmp_path, capsys):
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "images").symlink_to(elsewhere, target_is_directory=True)
    assert "symbolic link" in user_error(capsys, *purify(work, work.a, out))
    assert not list(elsewhere.iterdir())


def test_8_formula_file_names_are_escaped_in_predictions_csv(work, tmp_path, capsys):
    names = ("=cmd.png", "+sum.png", "-neg.png", "@at.png", "plain.png")
    source = _images(tmp_path / "in", 5, names, classes=False)
    assert run_cli(capsys, *purify(work, source, tmp_path / "p"))[0] == 0
    with open(tmp_path / "p" / "predictions.csv") as f:
        paths = {row["path"] for row in csv.DictReader(f)}
    assert paths == {"'=cmd.png", "'+sum.png", "'-neg.png", "'@at.png", "plain.png"}


def test_8_export_onnx_does_not_overwrite_its_model_with_the_sidecar(work, tmp_path, capsys):
    model = tmp_path / "m.json"
    model.write_text("{}")
    assert "sidecar" in user_error(capsys, "export", "onnx", "--checkpoint", work.checkpoint, "--out", model)
    assert model.read_text() == "{}"


def test_8_the_api_refuses_wrong_dtypes_sizes_and_step_counts(work):
    purifier = Purifier.from_checkpoint(work.checkpoint, steps=1)
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(TypeError, match=f"x is {dtype} but the classifier's weights are torch.float32"):
            purifier.purify(torch.rand(1, 3, 32, 32).to(dtype))
    with pytest.raises(ValueError, match="64x64 images .* built for 32x32"):
        purifier.purify(torch.rand(1, 3, 64, 64))
    assert Purifier.from_checkpoint(work.checkpoint, steps=1, image_size=None).purify(torch.rand(1, 3, 16, 16)).shape \
        == (1, 3, 16, 16)  # asked for explicitly
    for spec in ("pgd99999999999", "bpda-eot99999-pgd10", "aware-pgd10@inf"):
        with pytest.raises(ValueError, match="must be >= 1 and <= 1|finite"):
            build_attack(spec, purifier=purifier, eps=8 / 255)
