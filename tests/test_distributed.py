"""Scale-out on CPU with gloo: ``pyengine eval`` and ``pyengine purify`` on 2 processes
launched by torchrun give the 1-process outputs; odd image counts; killed runs resume."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from PIL import Image

from pyengine import Purifier, cli, create_model, save_checkpoint
from pyengine.batch import ImageSource, purify_images
from pyengine.data import CIFAR10_CLASSES, DataError
from pyengine.evaluation.runner import EvalConfig, plan_units, shard
from pyengine.models import ContrastiveHead
from pyengine.resume import RunFolderError

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 7  # odd; batches of 3 leave a last batch of 1, and 3 x 3 eval units shard 5/4 over 2 ranks
EVAL = ["--attacks", "fgsm,pgd2", "--batch-size", "3", "--steps", "2", "--threads", "1"]
PURIFY = ["--batch-size", "3", "--steps", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A random tiny checkpoint and 7 PNGs in CIFAR-10 class folders."""
    root = tmp_path_factory.mktemp("scale_out")
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny").eval()
    checkpoint = save_checkpoint(root / "tiny.safetensors", model, head=ContrastiveHead(model.num_features, 16, 8),
                                 aux={"contrastive_bank": torch.randn(16, 8)})
    images = (torch.rand(N_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    for i in range(N_IMAGES):
        # Every other image is labelled with the model's own guess, so accuracies are neither 0 nor 1.
        folder = root / "images" / CIFAR10_CLASSES[int(predicted[i] + i % 2) % 10]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return SimpleNamespace(root=root, checkpoint=checkpoint, images=root / "images")


def cli_exit_code(*args) -> int:
    """``pyengine ARGS`` in this interpreter (no torchrun environment, so ``world()`` is a
    world of one), keeping the test process's thread count."""
    assert "RANK" not in os.environ
    threads = torch.get_num_threads()
    try:
        return cli.main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def in_process(*args) -> None:
    assert cli_exit_code(*args) == 0


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(*args, nproc: int = 2) -> None:
    """``torchrun --standalone --nproc-per-node 2 -m pyengine ...`` (gloo: no GPU here)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "pyengine", *map(str, args)]
    proc = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def eval_args(work, out: Path) -> list:
    return ["eval", "--checkpoint", work.checkpoint, "--data", work.images, *EVAL, "--out", out]


def purify_args(work, source: Path, out: Path) -> list:
    return ["purify", source, "--checkpoint", work.checkpoint, *PURIFY, "--out", out]


def report(out: Path) -> tuple[dict, list[str]]:
    """results.json without timings, and the table's header line and rows."""
    results = json.loads((out / "results.json").read_text())
    table = [line for line in (out / "table.md").read_text().splitlines() if line.startswith(("|", "Images:"))]
    return {k: results[k] for k in ("images", "attacks", "worst_case", "config")}, table


@pytest.fixture(scope="module")
def eval_one(work):
    in_process(*eval_args(work, work.root / "eval1"))
    return work.root / "eval1"


@pytest.fixture(scope="module")
def eval_two(work):
    torchrun(*eval_args(work, work.root / "eval2"))
    return work.root / "eval2"


@pytest.fixture(scope="module")
def purify_one(work):
    in_process(*purify_args(work, work.images, work.root / "purify1"))
    return work.root / "purify1"


@pytest.fixture(scope="module")
def purify_two(work):
    torchrun(*purify_args(work, work.images, work.root / "purify2"))
    return work.root / "purify2"


def test_report_names_the_purifier_it_ran(eval_one):
    purifier = json.loads((eval_one / "results.json").read_text())["config"]["purifier"]
    assert purifier.startswith("Purifier(steps=2,") and "precision='auto'" in purifier
    assert f"Purifier: `{purifier}`." in (eval_one / "table.md").read_text()


def test_two_processes_write_the_one_process_report(eval_one, eval_two):
    one, two = report(eval_one), report(eval_two)
    print("\n1 process:\n" + "\n".join(one[1]) + "\n2 processes:\n" + "\n".join(two[1]))
    assert one == two
    accuracies = [row["standard"] for row in one[0]["attacks"].values()]
    assert 0 < accuracies[0] < 1, "the fixture should give a clean accuracy strictly between 0 and 1"


def test_odd_image_count_every_image_counted_once(eval_two, purify_two):
    config = EvalConfig(attacks=["fgsm", "pgd2"], n=N_IMAGES, batch_size=3)
    assert [len(shard(plan_units(config, N_IMAGES), r, 2)) for r in (0, 1)] == [5, 4]
    indices: dict[str, list[int]] = {}
    for path in sorted((eval_two / "units").glob("*.json")):
        attack = path.name.rsplit("__", 1)[0]
        indices.setdefault(attack, []).extend(r["index"] for r in json.loads(path.read_text())["records"])
    assert {a: sorted(i) for a, i in indices.items()} == {a: list(range(N_IMAGES)) for a in ("clean", "fgsm", "pgd2")}
    assert all(row["images"] == N_IMAGES for row in report(eval_two)[0]["attacks"].values())
    with open(purify_two / "predictions.csv") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert len(paths) == len(set(paths)) == N_IMAGES and paths == sorted(paths)


def test_killed_run_resumes_with_only_the_missing_units(work, eval_one, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "pyengine", *map(str, eval_args(work, out))]
    proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "units").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        exited = proc.poll()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {p: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    assert exited is None and 1 <= len(done) < 9, \
        f"the run should be killed midway: exit status {exited}, {len(done)} of 9 units done"

    in_process(*eval_args(work, out))  # the same command again
    assert len(list((out / "units").glob("*.json"))) == 9
    assert {p: p.stat().st_mtime_ns for p in done} == done, "finished units must not be recomputed"
    assert report(out) == report(eval_one)


def test_purify_two_processes_write_the_one_process_outputs(purify_one, purify_two):
    assert (purify_two / "predictions.csv").read_bytes() == (purify_one / "predictions.csv").read_bytes()
    pngs = sorted(p.relative_to(purify_one) for p in (purify_one / "images").rglob("*.png"))
    assert len(pngs) == N_IMAGES
    assert pngs == sorted(p.relative_to(purify_two) for p in (purify_two / "images").rglob("*.png"))
    assert all((purify_one / p).read_bytes() == (purify_two / p).read_bytes() for p in pngs)
    summary = json.loads((purify_one / "summary.json").read_text())
    with open(purify_one / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "prediction", "label", "loss_before", "loss_after"]
    assert summary["accuracy"] == pytest.approx(sum(r["prediction"] == r["label"] for r in rows) / N_IMAGES)


def test_purify_resume_redoes_only_missing_batches(work, purify_one, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(purify_one, out)
    (out / "parts" / "batch_00001.json").unlink()
    (out / "predictions.csv").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json")}
    in_process(*purify_args(work, work.images, out))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (out / "predictions.csv").read_bytes() == (purify_one / "predictions.csv").read_bytes()


def test_purify_reads_a_nested_zip_like_the_folder(work, purify_one, tmp_path):
    archive = tmp_path / "shots.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in work.images.rglob("*.png"):
            zf.write(path, f"day1/{path.relative_to(work.images).as_posix()}")
        zf.writestr("__MACOSX/day1/._junk.png", b"not an image")
    in_process(*purify_args(work, archive, tmp_path / "out"))
    zipped = (tmp_path / "out" / "predictions.csv").read_text().replace("day1/", "")
    assert zipped == (purify_one / "predictions.csv").read_text()
    assert (tmp_path / "out" / "images" / "day1").is_dir()


def test_purify_input_errors(work, purify_one, tmp_path, capsys):
    purifier = Purifier.from_checkpoint(work.checkpoint, steps=2)
    small = tmp_path / "small" / "a" / "b"
    small.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(small / "ok.png")
    Image.new("RGB", (16, 16)).save(small / "tiny.jpg")
    with pytest.raises(DataError, match=r"b/tiny\.jpg is 16x16 pixels but the model takes 32x32"):
        purify_images(purifier, tmp_path / "small", tmp_path / "o1", progress=False)
    assert ImageSource.open(tmp_path / "small").labels is None  # a/b/ are not class names: no labels

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.png", b"")
    with pytest.raises(DataError, match="outside the output folder"):
        ImageSource.open(evil)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageSource.open(tmp_path / "empty")
    twins = tmp_path / "twins"
    twins.mkdir()
    Image.new("RGB", (32, 32)).save(twins / "x.png")
    Image.new("RGB", (32, 32)).save(twins / "x.jpg")
    with pytest.raises(DataError, match="would both be written as 'x.png'"):
        ImageSource.open(twins)
    with pytest.raises(RunFolderError, match="another configuration: .*seed \\(0 there, 1 now\\)"):
        purify_images(purifier, work.images, purify_one, batch_size=3, seed=1, progress=False)
    other_steps = purify_args(work, work.images, purify_one) + ["--steps", "1"]
    assert cli_exit_code(*other_steps) == 2  # the CLI says why, without a traceback
    assert "another configuration: purifier" in capsys.readouterr().err
