"""The step-schedule study (speed at equal robustness) and parity under adaptive attacks."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cifar_zips import write_cifar_zips
from pyengine import Purifier, create_model
from pyengine.attacks import BPDA, PGD
from pyengine.data import ImageSet
from pyengine.evaluation.parity import check_parity, evaluate_path
from pyengine.evaluation.schedules import Schedule, run_study, table
from pyengine.models import ContrastiveHead
from pyengine.random import CounterRandom

SCRIPT = Path(__file__).parents[1] / "scripts" / "step_schedule_study.py"


def make_purifier(steps: int = 2, step_size: float = 2 / 255) -> Purifier:
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny").eval()
    return Purifier(model, ContrastiveHead(model.num_features, 16, 8), steps=steps, step_size=step_size,
                    bank=torch.randn(16, 8), precision="fp32")


def images(n: int = 4) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    return ImageSet((torch.rand(n, 3, 32, 32, generator=gen) * 255).to(torch.uint8), torch.randint(0, 10, (n,), generator=gen))


def test_adaptive_parity_attacks_each_path_with_the_draws_it_is_judged_with():
    data = images()
    purifier = make_purifier()
    result = evaluate_path(purifier, data, attack="bpda-pgd2", batch_size=4, robust_only=True, progress=False)
    assert result["adaptive"]
    # Rebuild the evaluation by hand: BPDA through this defense replaying the purification's draws.
    x, y = data.images.float() / 255, data.labels
    index = torch.arange(4)
    attack = PGD(BPDA(purifier, seed=2), eps=8 / 255, steps=2, keep_best=True)
    x_adv = attack.perturb(x, y, generator=CounterRandom(2, index))
    purified = purifier.purify(x_adv, generator=CounterRandom(2, index))
    assert torch.equal(result["correct"]["robust"], purifier.classifier(purified).argmax(1) == y)
    report = check_parity(purifier, make_purifier(steps=1), data, attack="bpda-pgd2", batch_size=4,
                          robust_only=True, progress=False)
    assert report["adaptive"] and report["fast_path"]["steps"] == 1 and report["reference_path"]["steps"] == 2
    split = report["robust_disagreements"]
    assert report["gain_difference"] == pytest.approx(100 * (split["fast_only"] - split["reference_only"]) / 4)


def test_static_parity_hands_both_paths_the_same_adversarial_images():
    data = images()
    cache = {}
    first = evaluate_path(make_purifier(), data, attack="pgd2", batch_size=4, progress=False, static_cache=cache)
    second = evaluate_path(make_purifier(steps=3), data, attack="pgd2", batch_size=4, progress=False,
                           static_cache=cache)
    assert len(cache) == 1 and not first["adaptive"]
    assert torch.equal(first["correct"]["standard_robust"], second["correct"]["standard_robust"])


def test_study_compares_every_schedule_under_every_attack_and_adopts_none_on_few_images():
    data = images()
    loads = []

    def load(schedule):
        loads.append(schedule)
        return make_purifier(schedule.steps, schedule.step_size)

    saved = []
    study = run_study(load, data, schedules=(Schedule(1, 4 / 255),), reference=Schedule(2, 2 / 255),
                      attacks=("pgd2", "bpda-pgd1"), batch_size=4, progress=False, on_result=saved.append)
    entry = study["schedules"][0]
    assert set(entry["comparison"]) == {"pgd2", "bpda-pgd1"} and len(saved) == 2
    assert entry["images_per_second"] > 0 and study["reference"]["images_per_second"] > 0
    assert not entry["adoptable"]  # 4 images, far below IMAGES_TO_ADOPT
    assert "K=1, a=4/255" in table(study) and study["machine"] in table(study)
    with pytest.raises(ValueError, match="among the candidates"):
        run_study(load, data, schedules=(Schedule(2, 2 / 255),), reference=Schedule(2, 2 / 255), progress=False)


@pytest.mark.parametrize("text, expected", [("10@4/255", Schedule(10, 4 / 255)), ("5@0.03", Schedule(5, 0.03))])
def test_schedule_parse(text, expected):
    assert Schedule.parse(text) == expected


@pytest.mark.parametrize("text", ["10", "x@4/255", "10@4/0", "0@4/255", "10@-1"])
def test_schedule_parse_rejects_bad_text(text):
    with pytest.raises(ValueError):
        Schedule.parse(text)


def test_smoke_mode_of_the_study_script_runs_end_to_end(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("step_schedule_study", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    monkeypatch.setenv("SMOKE", "1")
    study = script.main(["--data", str(data), "--out", str(tmp_path / "out"), "--threads", "1"])
    written = json.loads((tmp_path / "out" / "study.json").read_text())
    assert written["n"] == 4 and [e["label"] for e in written["schedules"]] == ["K=2, a=4/255", "K=1, a=8/255"]
    assert set(written["schedules"][0]["comparison"]) == {"pgd2", "bpda-pgd2"}
    assert (tmp_path / "out" / "robust_vs_speed.png").stat().st_size > 0
    assert (tmp_path / "out" / "table.md").read_text().startswith("| schedule |")
    assert study["reference"]["steps"] == 4


def test_cli_parity_checks_a_step_schedule_under_bpda(tmp_path):
    from pyengine.cli import main

    data = write_cifar_zips(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    out = tmp_path / "parity.json"
    status = main(["parity", "--data", str(data), "--n", "2", "--batch-size", "2", "--attack", "bpda-fgsm",
                   "--precision", "fp32", "--steps", "2", "--step-size", "8/255", "--robust-only", "--threads", "1",
                   "--out", str(out)])
    report = json.loads(out.read_text())
    assert status == (0 if report["passed"] else 1) and report["adaptive"]
    assert (report["fast_path"]["steps"], report["reference_path"]["steps"]) == (2, 40)
    assert report["fast_path"]["step_size"] == pytest.approx(8 / 255)
