"""The papers' GPU pipeline: the whole smoke run on a CPU, the scheduler's deadline rules,
the cost model and the GPU plan's commands (checked without a GPU)."""
from __future__ import annotations

import json
import subprocess
import zipfile

import pytest
import torch

from cifar_zips import write_cifar_zips
from pyengine.attacks import build_attack, expand_specs
from pyengine.data import load_cifar10
from pyengine.gpu_pipeline import GPU, SETTINGS, SMOKE, Layout, Step
from pyengine.gpu_pipeline.bench import SMOKE_BENCH
from pyengine.gpu_pipeline.cli import main
from pyengine.gpu_pipeline.costs import NOMINAL_H200, attack_seconds
from pyengine.gpu_pipeline.runner import EXIT_INCOMPLETE, execute, exit_code, schedule
from pyengine.gpu_pipeline.steps import build_steps
from pyengine.models import ContrastiveHead, create_model, read_manifest
from pyengine.purify import Purifier

RATES = NOMINAL_H200  # only their ratios matter here


# ---- the smoke run ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One full smoke run (every stage, all four settings) into a temporary folder."""
    root = tmp_path_factory.mktemp("smoke")
    data = write_cifar_zips(root / "cifar10")
    work = root / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the commands' processes: no thread oversubscription on a busy CI machine
        code = main(["run", "--smoke", "--data", str(data), "--work", str(work)])
    return code, data, work


def test_the_smoke_run_produces_every_stage_s_outputs(smoke):
    code, _, work = smoke
    assert code == 0
    root = work / "publish"
    assert len(list((work / "data").glob("cifar10-*.pt"))) == 1
    for name, setting in SETTINGS.items():
        ckpt = root / "pyengine" / "checkpoints" / f"cifar10_{SMOKE.model}{setting.suffix}.safetensors"
        manifest = read_manifest(ckpt)
        assert manifest["stored_dtype"] == "float16"
        assert manifest["training"]["command"].startswith("pyengine train-classifier")
        assert "pyengine.gpu_pipeline run" in manifest["published_by"]
        assert (manifest.get("aux_task") is not None) == setting.soap
        assert ("head_training" in manifest) == (not setting.soap)
        static = json.loads((root / "docs/results/cpu/reproduce" / name / "results.json").read_text())
        expected = [*SMOKE.static, *(SMOKE.soap_static if setting.soap else ()), *SMOKE.heavy]
        assert static["config"]["attacks"] == expected and static["images"] == SMOKE.n_static
        adaptive = json.loads((root / "docs/results/cpu/reproduce" / f"{name}_adaptive" / "results.json").read_text())
        assert adaptive["config"]["attacks"] == [*SMOKE.adaptive_fast, *SMOKE.adaptive_full]
        assert (work / "eval" / name / "units").is_dir()  # the per-unit files stay in the work folder
        assert not (root / "docs/results/cpu/reproduce" / name / "units").exists()
    tables = (root / "docs/results/cpu/reproduce/RESULTS.md").read_text()
    assert "python3 -m pyengine.gpu_pipeline run" in tables and "Not run yet" not in tables
    listed = (work / "published.txt").read_text().split()
    assert len(listed) == 4 + 8 + len(SMOKE_BENCH) + 1 + 1 and all((root / p).exists() for p in listed)


def test_the_smoke_run_s_bench_stage_publishes_the_ablation_and_the_parity_check(smoke):
    from pyengine.bench_table import load_rows, markdown

    _, _, work = smoke
    out = work / "publish/docs/results/cpu/bench"
    rows = load_rows(out / f"bench_{SMOKE_BENCH[0].model}.json")
    assert [r["batch"] for r in rows] == [2] and rows[0]["steps"] == 2
    variants = {f"variant:{v}" for v in SMOKE_BENCH[0].variants.split(",")}
    assert {"engine", "published"} | variants <= set(rows[0])
    assert "fp32-eager" in markdown(rows) and "mean_steps" in rows[0]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["n"] == 8 and parity["fast_path"]["fold_batchnorm"] and "passed" in parity


def test_a_rerun_skips_every_finished_step(smoke, capfd):
    _, data, work = smoke
    capfd.readouterr()
    assert main(["run", "--smoke", "--data", str(data), "--work", str(work)]) == 0
    out = capfd.readouterr().out
    assert "measured:" not in out  # nothing to do, so nothing is measured
    assert "\n== " not in out and out.count("done, skipped") == 1 + 4 * 3 - 2 + 4 * 4 + len(SMOKE_BENCH) + 1


def test_a_step_that_does_not_fit_the_deadline_is_not_started(smoke, capfd):
    _, data, work = smoke
    adaptive = work / "publish/docs/results/cpu/reproduce/adversarial_adaptive/results.json"  # the published report
    saved = adaptive.read_text()
    adaptive.unlink()
    try:
        capfd.readouterr()
        code = main(["run", "--smoke", "--data", str(data), "--work", str(work), "--deadline", "15.5"])
        out = capfd.readouterr().out
        assert code == EXIT_INCOMPLETE
        assert "eval adversarial adaptive-fast: not started: one epoch or unit needs" in out
        assert "left: eval adversarial adaptive-fast (no time), eval adversarial adaptive (no time);" in out
        assert not adaptive.exists()
    finally:
        adaptive.write_text(saved)


# ---- the scheduler ----------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _step(name, seconds, unit=None, needs=(), outputs=None):
    outputs = outputs if outputs is not None else set()
    return Step(name, "train", lambda: name in outputs, lambda r: (seconds, unit), argv=["x"], needs=needs)


def test_steps_start_only_when_their_unit_or_their_whole_fits():
    clock, done, ran = FakeClock(), set(), []

    def run(step, timeout):
        ran.append((step.name, timeout))
        clock.now += 10
        done.add(step.name)
        return "ok"

    steps = [_step("finished", 5, outputs=done), _step("short", 10, outputs=done),
             _step("long resumable", 500, unit=20, outputs=done), _step("long", 35, outputs=done),
             _step("after long", 5, needs=("long",), outputs=done), _step("small", 5, outputs=done)]
    done.add("finished")
    status = schedule(steps, {}, deadline=50.0, run=run, clock=clock, log=lambda m: None)
    assert status == {"finished": "done", "short": "ran", "long resumable": "ran", "long": "no time",
                      "after long": "blocked", "small": "ran"}
    assert ran == [("short", 50.0), ("long resumable", 40.0), ("small", 30.0)]  # each gets the time left
    assert exit_code(status) == EXIT_INCOMPLETE


def test_failures_and_timeouts_set_the_exit_status():
    outputs = set()
    steps = [_step("a", 1, outputs=outputs), _step("b", 1, needs=("a",), outputs=outputs)]
    status = schedule(steps, {}, deadline=None, run=lambda s, t: "timeout", log=lambda m: None)
    assert status == {"a": "timeout", "b": "blocked"} and exit_code(status) == EXIT_INCOMPLETE
    status = schedule(steps, {}, deadline=None, run=lambda s, t: "ok", log=lambda m: None)
    assert status["a"] == "failed"  # "ok" without its output is a failure
    assert exit_code(status) == 1
    assert exit_code({"a": "done", "b": "ran"}) == 0


def test_a_command_is_its_own_process_and_a_deadline_kills_it(monkeypatch):
    failing = Step("bad", "train", lambda: False, lambda r: (1, None), argv=["no-such-command"])
    assert execute(failing, timeout=60) == "failed"

    def too_slow(*args, timeout=None, **kwargs):
        raise subprocess.TimeoutExpired(args[0], timeout)

    monkeypatch.setattr(subprocess, "run", too_slow)
    assert execute(failing, timeout=1) == "timeout"


# ---- the GPU plan, checked here ---------------------------------------------------------

def _gpu_steps(tmp_path, settings=tuple(SETTINGS)):
    layout = Layout(tmp_path / "work", tmp_path / "root", "h200")
    return build_steps(GPU, layout, list(settings), device="cuda", source=tmp_path, cache=tmp_path / "c.pt",
                       counts={"train": 50000, "test": 10000})


def test_every_gpu_command_parses_and_every_attack_spec_builds(tmp_path):
    from pyengine.cli import build_parser

    steps = _gpu_steps(tmp_path)
    for step in steps:
        if step.argv and step.module == "pyengine":
            args = build_parser().parse_args(step.argv)
            if step.argv[0] == "train-classifier":
                assert args.precision == "bf16" and args.device == "cuda"
    classifier = create_model("preact_resnet_tiny")
    purifier = Purifier(classifier, ContrastiveHead(classifier.num_features, 8, 4), negatives="batch", steps=1)
    for scale in (GPU, SMOKE):
        specs = [*scale.static, *scale.heavy, *scale.soap_static, *scale.adaptive_fast, *scale.adaptive_full]
        for spec in expand_specs(specs):
            assert build_attack(spec, classifier=classifier, purifier=purifier, eps=8 / 255).name == spec
            for setting in SETTINGS:
                assert attack_seconds(spec, 100, RATES, setting=setting, steps=40) > 0


def test_soap_s_own_attack_is_20_steps_of_2_255_from_the_input():
    attack = build_attack(GPU.soap_static[0], classifier=create_model("preact_resnet_tiny"), eps=8 / 255)
    assert attack.steps == 20 and attack.step_size == pytest.approx(2 / 255)
    assert not attack.rule.random_start


def test_the_cost_model_scales_with_steps_eot_and_images():
    cost = lambda spec, n=100: attack_seconds(spec, n, RATES, setting="adversarial", steps=40)  # noqa: E731
    purify = 100 / RATES["purify"]
    assert cost("pgd200") - purify == pytest.approx(4 * (cost("pgd50") - purify))
    assert cost("unrolled-eot4-pgd50") - purify == pytest.approx(4 * (cost("unrolled-pgd50") - purify))
    assert cost("bpda-iterates-pgd50") > cost("bpda-pgd50")
    assert cost("pgd50", 200) == pytest.approx(2 * cost("pgd50"))
    assert cost("autoattack") > cost("pgd200")
    with pytest.raises(ValueError, match="no cost model"):
        cost("deepfool")


def test_the_gpu_plan_puts_mao_s_settings_first_and_every_step_has_a_cost(tmp_path):
    steps = _gpu_steps(tmp_path)
    names = [s.name for s in steps]
    assert names[:4] == ["data", "train adversarial", "head adversarial", "publish adversarial"]
    # all training first: once its checkpoints are committed, a GPU call can no longer carry train.zip
    assert max(i for i, s in enumerate(steps) if s.stage == "train") < names.index("eval adversarial static")
    assert names.index("train standard") < names.index("train soap_lc")
    assert names.index("eval standard adaptive-fast") < names.index("eval adversarial autoattack")
    assert names.index("eval adversarial autoattack") < names.index("eval soap_lc static")
    assert names[-4:] == ["eval soap_rp adaptive", "bench preact_resnet18", "bench wide_resnet28_10", "bench parity"]
    assert all(s.needs[0] == "data" for s in steps[1:])
    for step in steps:
        total, unit = step.cost(RATES)
        assert total > 0 and (unit is None or 0 < unit <= total), step.name
    train = next(s for s in steps if s.name == "train adversarial")
    assert train.argv[train.argv.index("--batch-size") + 1] == "128"  # Wong et al.'s FGSM-RS recipe
    assert [s.name for s in _gpu_steps(tmp_path, ["standard"])][:2] == ["data", "train standard"]


def test_the_published_fgsm_rs_checkpoint_is_the_one_the_demo_looks_for(tmp_path):
    from pyengine import demo

    layout = Layout(tmp_path, tmp_path, "h200")
    assert layout.published(SETTINGS["adversarial"], GPU).name == demo.GPU_CHECKPOINT.name
    assert layout.published(SETTINGS["adversarial"], GPU).parent.relative_to(tmp_path) == \
        demo.GPU_CHECKPOINT.parent.relative_to(demo.GPU_CHECKPOINT.parents[2])


def test_a_failed_measurement_falls_back_to_nominal_rates_and_is_not_saved(tmp_path, monkeypatch, capsys):
    from pyengine.gpu_pipeline import cli, costs

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(costs, "measure", broken)
    rates = cli._rates(SMOKE, ["standard"], ["standard"], torch.device("cpu"), tmp_path, tmp_path, "cpu", False)
    assert rates == NOMINAL_H200 and "out of memory" in capsys.readouterr().out
    assert not (tmp_path / "throughput.json").exists()


def test_extending_a_run_published_by_another_machine_counts_the_attacks_it_redoes(tmp_path):
    steps = {s.name: s for s in _gpu_steps(tmp_path)}
    extension, static = steps["eval adversarial autoattack"], steps["eval adversarial static"]
    alone = extension.cost(RATES)[0]
    results = {"config": {"attacks": list(GPU.static)}}
    for folder in (tmp_path / "root/docs/results/h200/reproduce/adversarial", tmp_path / "work/eval/adversarial"):
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(results))
        if "work" not in str(folder):  # published, but this machine has no units: all again
            assert extension.cost(RATES)[0] == pytest.approx(alone + static.cost(RATES)[0] - RATES["startup"])
    assert extension.cost(RATES)[0] == pytest.approx(alone)


# ---- the data a device call carries -----------------------------------------------------

def test_the_carried_test_split_is_a_class_balanced_prefix_that_fits(tmp_path):
    from pyengine.gpu_pipeline.carry import prepare, tree_bytes

    data = write_cifar_zips(tmp_path / "cifar10", test_per_class=150)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "code.py").write_text("x = 1\n")
    train_size = (data / "train.zip").stat().st_size
    test_bytes = (data / "test.zip").stat().st_size
    limit = tree_bytes(repo) + train_size + 1024 + int(0.8 * test_bytes)
    n = prepare(data, tmp_path / "carry", repo=repo, limit_bytes=limit, margin_bytes=1024, log=lambda m: None)
    assert 1000 <= n < 1500 and n % 10 == 0
    assert (tmp_path / "carry" / "train.zip").stat().st_size == train_size
    assert tree_bytes(repo) + train_size + (tmp_path / "carry" / "test.zip").stat().st_size <= limit - 1024
    carried, full = load_cifar10(tmp_path / "carry", "test"), load_cifar10(data, "test", limit=n)
    assert torch.equal(carried.images, full.images) and torch.equal(carried.labels, full.labels)
    with zipfile.ZipFile(tmp_path / "carry" / "test.zip") as zf:
        assert len(zf.namelist()) == n


def test_train_classifier_compile_compiles_the_model_in_place(monkeypatch, tmp_path):
    from pyengine.cli import main as pyengine_main

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    out = tmp_path / "c.safetensors"
    assert pyengine_main(["train-classifier", "--epochs", "1", "--batch-size", "10", "--compile", "--data", str(data),
                          "--out", str(out), "--device", "cpu"]) == 0
    assert compiled == ["PreActResNet"] and out.is_file()


def test_the_measurement_gives_every_rate_the_plan_reads(tmp_path, monkeypatch):
    """The GPU scale's shape, SOAP on another model than Mao et al.'s settings; the timings
    themselves are stubbed (the smoke run times the real ones)."""
    import dataclasses
    import math

    from pyengine.gpu_pipeline import costs

    monkeypatch.setattr(costs, "_slope", lambda run, n1, n2, device: 100.0)
    monkeypatch.setattr(costs, "_purify_rate", lambda purifier, x, y, device, oracle=False: 10.0)
    monkeypatch.setattr(costs, "_grad_rate", lambda classifier, x, y, device: 50.0)
    monkeypatch.setattr(costs, "_timed", lambda fn, device: 1.0)
    scale = dataclasses.replace(SMOKE, soap_model="preact_resnet18_half")
    settings = ["adversarial", "soap_lc"]
    rates = costs.measure(scale, settings, torch.device("cpu"), log=lambda m: None)
    assert {"train/adversarial", "train/soap_lc", "head", "purify", "grad", "soap/soap_lc", "grad_soap",
            "startup"} <= set(rates)
    layout = Layout(tmp_path / "work", tmp_path / "root", "cpu")
    for step in build_steps(scale, layout, settings, device="cpu", source=tmp_path, cache=tmp_path / "c.pt",
                            counts={"train": 100, "test": 50}):
        total, _ = step.cost(rates)
        assert math.isfinite(total) and total > 0, step.name


def test_the_gpu_bench_stage_fits_its_four_minutes_and_names_only_known_variants(tmp_path):
    from pyengine import EarlyExit
    from pyengine.bench_table import parse_variant
    from pyengine.cli import build_parser

    bench = [s for s in _gpu_steps(tmp_path) if s.stage == "bench"]
    assert sum(s.cost(RATES)[0] for s in bench) <= 240
    for step in bench:
        assert all(p.is_relative_to(tmp_path / "root/docs/results/h200/bench") for p in step.outputs)
        if step.module == "pytest":
            assert step.env["PYENGINE_BENCH_STEPS"] == "40" and step.argv[0].endswith("bench/test_bench_purify.py")
            for variant in step.env["PYENGINE_BENCH_VARIANTS"].split(","):
                parse_variant(variant, early_exit=EarlyExit(0.01, 3))
        else:
            args = build_parser().parse_args(step.argv)
            assert args.n == 10000 and args.device == "cuda"
    with pytest.raises(ValueError, match="variant 'bf16-fast'"):
        parse_variant("bf16-fast")
