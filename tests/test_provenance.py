"""The provenance record (pyengine.provenance), every writer of results storing it, and no
absolute path of a machine in a committed file or a written result."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pyengine import Purifier, cli, create_model, provenance as prov
from pyengine.data import CIFAR10_CLASSES, ImageSet
from pyengine.hardware import cpu_description
from pyengine.models import ContrastiveHead

REPO = Path(__file__).resolve().parent.parent
FIELDS = {"commit", "dirty", "command", "versions", "device", "processes", "data", "started", "finished"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# A path of some machine's file system: /work/, /home/, ... at the start of a path (file:///work/
# included, ../tmp/ not), or a Windows drive (C:\Users, JSON-escaped C:\\Users; not an escaped "\n").
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|tmp|Users|mnt|opt|scratch|private|var|srv|data)/"
                           r"|(?<![\w\\])[A-Za-z]:(?:\\\\|\\)(?![ntr\"\\])\w")


def absolute_paths(text: str) -> list[str]:
    return [text[max(0, m.start() - 30):m.end() + 30] for m in ABSOLUTE_PATH.finditer(text)]


def tiny_purifier(steps: int = 1, **kwargs) -> Purifier:
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny").eval()
    return Purifier(model, ContrastiveHead(model.num_features, 16, 8), steps=steps, bank=torch.randn(16, 8),
                    **kwargs)


def tiny_images(n: int = 4, size: int = 32) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    return ImageSet((torch.rand(n, 3, size, size, generator=gen) * 255).to(torch.uint8),
                    torch.randint(0, 10, (n,), generator=gen))


def check_record(record: dict, *, images: int | None) -> None:
    assert set(record) == FIELDS
    assert record["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    assert record["dirty"] in (True, False, None)
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["pyengine"]
    assert record["device"] == cpu_description()  # the tests run on the CPU
    assert ISO_UTC.match(record["started"]) and ISO_UTC.match(record["finished"])
    assert record["started"] <= record["finished"]
    if images is None:
        assert record["data"] is None
    else:
        assert record["data"]["images"] == images and re.fullmatch(r"sha256:[0-9a-f]{16}", record["data"]["digest"])
    assert not absolute_paths(json.dumps(record)), record


# --- the record -------------------------------------------------------------------------

def test_the_record_holds_every_field_and_identifies_the_data_by_content():
    data = tiny_images(3)
    record = prov.provenance(data=data, started="2025-01-02T03:04:05Z", argv=["pyengine", "eval"])
    check_record(record, images=3)
    assert record["started"] == "2025-01-02T03:04:05Z" and record["command"] == "pyengine eval"
    assert "threads" in record["device"]  # a CPU is named with its threads and ISA flags
    same = prov.data_identity(ImageSet(data.images.clone(), data.labels.clone()))
    other = prov.data_identity(ImageSet(data.images.flip(0), data.labels))
    assert same == record["data"] and other["digest"] != record["data"]["digest"]


def test_a_checkout_gives_its_commit_and_no_git_gives_unknown(monkeypatch):
    commit, dirty = prov.git_state()
    if prov.repository_root() is not None and commit != "unknown":
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert commit == head.stdout.strip() and isinstance(dirty, bool)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(prov.subprocess, "run", no_git)
    assert prov.git_state() == ("unknown", None)
    monkeypatch.setattr(prov, "repository_root", lambda: None)  # a wheel install
    assert prov.provenance()["commit"] == "unknown"


def test_paths_are_written_relative_to_the_repository_or_not_at_all(monkeypatch, tmp_path):
    root = prov._base()
    assert prov.relative_path(root / "docs" / "x.json") == "docs/x.json"
    assert prov.relative_path(root.parent / "shared" / "data") == "../shared/data"
    assert prov.relative_path("runs/eval") == "runs/eval"
    assert prov.relative_path(tmp_path / "deep" / "out") == "<elsewhere>/out"
    assert prov.relative_text(f"CIFAR-10 from {root.parent / 'shared'} at 8/255") == "CIFAR-10 from ../shared at 8/255"
    command = prov.command_text([str(root / "pyengine" / "__main__.py"), "eval", f"--out={tmp_path / 'run'}",
                                 "--data", str(root / "data"), "--eps", "8/255"])
    assert command == "pyengine eval '--out=<elsewhere>/run' --data data --eps 8/255"
    monkeypatch.setattr(prov, "repository_root", lambda: None)  # a wheel install: the working directory
    monkeypatch.chdir(tmp_path)
    assert prov.relative_path(tmp_path / "runs" / "a") == "runs/a"


def test_footer_names_commit_device_and_date_and_old_files_say_not_recorded():
    record = {"commit": "0123456789abcdef", "dirty": True, "device": "NVIDIA H200", "processes": 8,
              "finished": "2025-01-31T14:02:09Z"}
    assert prov.footer(record) == ("commit 0123456 (with uncommitted changes) · NVIDIA H200 x 8 processes · "
                                   "2025-01-31 14:02 UTC")
    assert prov.device_of({"provenance": record}) == "NVIDIA H200"
    assert prov.device_of({"images": 3}) == "not recorded"


# --- every writer -----------------------------------------------------------------------

def test_eval_writes_the_record_outside_the_config_digest(tmp_path):
    from pyengine.evaluation import EvalConfig, evaluate

    purifier, data = tiny_purifier(), tiny_images(5, 16)
    config = EvalConfig(attacks=["fgsm"], n=3, batch_size=3, checkpoint=str(tmp_path / "model.safetensors"))
    summary = evaluate(purifier, data, config, tmp_path / "eval", progress=False)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    check_record(results["provenance"], images=3)
    assert results["provenance"]["data"] == prov.data_identity(data.subset(3))
    claimed = json.loads((tmp_path / "eval" / "config.json").read_text())
    assert "provenance" not in claimed and results["config"]["digest"] == claimed["digest"]
    assert results["config"]["checkpoint"] == "<elsewhere>/model.safetensors"
    table = (tmp_path / "eval" / "table.md").read_text()
    assert f"Provenance: {prov.footer(summary['provenance'])}." in table
    for name in ("results.json", "table.md"):
        assert not absolute_paths((tmp_path / "eval" / name).read_text()), name
    # A second run of the same command is a resume, whatever the record says now.
    again = evaluate(purifier, data, config, tmp_path / "eval", progress=False)
    assert again["attacks"] == summary["attacks"]


def test_figure_2_is_titled_by_its_measured_means_and_every_figure_has_a_footer(tmp_path, monkeypatch):
    from pyengine.evaluation import figures

    closed = []
    monkeypatch.setattr(figures.pyplot(), "close", closed.append)
    records = {"clean": [{"loss": 2.0}, {"loss": 4.0}],
               "pgd2": [{"loss": 3.0, "loss_purified": 1.0}, {"loss": 3.0, "loss_purified": 2.0}]}
    record = prov.provenance()
    figures.loss_histograms(records, "pgd2", tmp_path, record=record)
    title = closed[0].axes[0].get_title()
    assert title == "L_s per image, mean: clean 3.000, attacked 3.000, purified 1.500"
    # The footer wraps (a CPU's flags make it long); its words are the record's footer.
    assert [t.get_text().replace("\n", " ") for t in closed[0].texts] == [prov.footer(record)]
    assert json.loads((tmp_path / "fig2_loss_histograms.json").read_text())["provenance"] == record
    purifier, data = tiny_purifier(), tiny_images(2, 16)
    x = data.float_images()
    figures.accuracy_vs_steps(purifier, x, data.labels, x, tmp_path)  # no record given: one is made
    check_record(json.loads((tmp_path / "fig5_accuracy_vs_steps.json").read_text())["provenance"], images=None)
    assert closed[1].texts[0].get_text().startswith("commit ")


def _image_folder(root: Path, n: int = 3) -> Path:
    images = tiny_images(n).images
    for i in range(n):
        folder = root / CIFAR10_CLASSES[i % 10]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


def test_purify_summary_holds_the_record_and_names_no_absolute_path(tmp_path):
    from pyengine.batch import purify_images

    source = _image_folder(tmp_path / "images")
    summary = purify_images(tiny_purifier(), source, tmp_path / "out", batch_size=2, progress=False,
                            settings={"checkpoint": "pyengine/checkpoints/x.safetensors"})
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == summary
    check_record(written["provenance"], images=3)
    assert (tmp_path / "out" / written["predictions"]).is_file() and (tmp_path / "out" / written["images_dir"]).is_dir()
    assert not absolute_paths((tmp_path / "out" / "summary.json").read_text())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["source"] == "<elsewhere>/images"
    first, second = sorted(source.rglob("*.png"))[:2]
    first.write_bytes(second.read_bytes())  # other contents, same names
    assert prov.data_identity(source)["digest"] != written["provenance"]["data"]["digest"]


def test_parity_report_holds_the_record_and_prints_its_footer():
    from pyengine.evaluation.parity import check_parity, markdown

    data = tiny_images(4)
    report = check_parity(tiny_purifier(precision="fp32"), tiny_purifier(precision="fp32"), data, attack="fgsm",
                          batch_size=4, robust_only=True, progress=False)
    check_record(report["provenance"], images=4)
    assert report["device"] == report["provenance"]["device"]
    assert markdown(report).endswith(f"Provenance: {prov.footer(report['provenance'])}.")


def test_training_manifests_hold_the_record_of_each_training(tmp_path):
    from pyengine.models import read_manifest
    from pyengine.train import ClassifierTrainConfig, HeadTrainConfig, train_classifier, train_head

    data = tiny_images(16)
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    train_classifier(model, data, tmp_path / "c.safetensors", ClassifierTrainConfig(epochs=1, batch_size=8),
                     progress=False, manifest={"dataset": "CIFAR-10 from ../shared/data/cifar10"})
    manifest = read_manifest(tmp_path / "c.safetensors")
    check_record(manifest["provenance"], images=16)
    head = ContrastiveHead(model.num_features, 16, 8)
    train_head(model, head, data, tmp_path / "h.safetensors", HeadTrainConfig(epochs=1, batch_size=8, bank_images=4),
               manifest={"provenance": manifest["provenance"]}, progress=False)
    both = read_manifest(tmp_path / "h.safetensors")
    assert both["provenance"] == manifest["provenance"]  # the classifier's, kept by train-head
    check_record(both["head_provenance"], images=16)


def _bench_json(path: Path, record: dict | None, device: str | None = "old device") -> Path:
    info = {"path": "engine", "model": "m", "steps": 2, "batch": 4, "flops_per_image": 1e9}
    if device:
        info["device"] = device
    if record:
        info["provenance"] = record
    path.write_text(json.dumps({"benchmarks": [{"extra_info": info, "stats": {"mean": 0.5}}]}))
    return path


def test_bench_table_has_a_device_column_from_the_record(tmp_path):
    from pyengine.bench_table import load_rows, markdown

    record = {**prov.provenance(), "device": "NVIDIA H200"}
    table = markdown(load_rows(_bench_json(tmp_path / "new.json", record), _bench_json(tmp_path / "old.json", None),
                               _bench_json(tmp_path / "older.json", None, device=None)))
    assert table.splitlines()[0].startswith("| model | device | K | batch |")
    rows = [line for line in table.splitlines() if line.startswith("| m |")]
    assert [row.split(" | ")[1] for row in rows] == ["NVIDIA H200", "not recorded", "old device"]
    assert f"Provenance: {prov.footer(record)}." in table


@pytest.mark.skipif(not __import__("importlib").util.find_spec("pytest_benchmark"), reason="needs pytest-benchmark")
def test_the_purification_benchmark_records_provenance(tmp_path):
    from pyengine.bench_table import load_rows

    env = {**os.environ, "PYENGINE_BENCH_STEPS": "1", "PYENGINE_BENCH_BATCHES": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/test_bench_purify.py", "-q", "-p", "no:cacheprovider",
                           "-k", "test_engine and not variant", "--benchmark-only", f"--benchmark-json={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    record = bench["extra_info"]["provenance"]
    assert set(record) == FIELDS and record["command"].startswith("python -m pytest bench/test_bench_purify.py")
    assert load_rows(out)[0]["device"] == record["device"] == bench["extra_info"]["device"]


def test_results_page_shows_each_runs_device_and_the_command_that_made_it(tmp_path):
    from pyengine.evaluation import EvalConfig, summarize
    from pyengine.evaluation.runner import CLEAN

    config = EvalConfig(attacks=["pgd50"], n=1, batch_size=1)
    row = {"index": 0, "label": 0, "adaptive": False, "standard": True, "purified": True, "loss": 1.0,
           "loss_purified": 0.5, "seconds": 0.1}
    summary = summarize({CLEAN: [row], "pgd50": [row]}, config)
    for name, record in (("standard", {**prov.provenance(), "device": "NVIDIA H200"}), ("adversarial", None)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "results.json").write_text(json.dumps({**summary, "provenance": record}))
    assert cli.main(["results", str(tmp_path / "runs"), "--out", str(tmp_path / "RESULTS.md")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| standard | 1 | NVIDIA H200 |" in text and "| adversarial | 1 | not recorded | not recorded |" in text
    assert "This page: `pyengine results '<elsewhere>/runs' --out '<elsewhere>/RESULTS.md'`" in text
    assert not absolute_paths(text)


# --- committed files --------------------------------------------------------------------

def _committed(folder: str) -> list[Path]:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", folder], capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        return [REPO / name for name in listed.stdout.decode().split("\0") if name]
    return sorted(p for p in (REPO / folder).rglob("*") if p.is_file())  # not a checkout (e.g. an sdist)


def test_absolute_path_pattern_finds_machine_paths_only():
    for leak in ('"/work/main/x"', "Obtaining file:///work/main", "C:\\Users\\me", '"C:\\\\Users\\\\me"',
                 "in /tmp/pytest-1/out"):
        assert absolute_paths(leak), leak
    for fine in ("../shared/data/cifar10", "https://example.com/home/x", "8/255", '"loss:\\nmore"',
                 "runs/tmp/x", "$OUT/parity.json"):
        assert not absolute_paths(fine), fine


def test_no_committed_document_or_result_names_an_absolute_path_of_a_machine():
    leaks = {}
    for path in [*_committed("docs"), REPO / "README.md"]:
        raw = path.read_bytes()
        if b"\0" in raw:  # images
            continue
        found = absolute_paths(raw.decode("utf-8", errors="replace"))
        if found:
            leaks[str(path.relative_to(REPO))] = found[:3]
    assert not leaks, f"absolute paths in committed files (write them relative to the repository): {leaks}"


def test_no_shipped_checkpoint_manifest_names_an_absolute_path_of_a_machine():
    from pyengine.models import read_manifest

    checkpoints = [p for p in _committed("pyengine/checkpoints") if p.suffix == ".safetensors"]
    assert checkpoints
    for path in checkpoints:
        manifest = read_manifest(path)
        manifest.pop("path")  # where this test read it from, not part of the file
        assert not absolute_paths(json.dumps(manifest)), path.name
