"""The evaluation runner: report, resume, sharding, figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyengine import Purifier, create_model
from pyengine.attacks import PGD
from pyengine.data import ImageSet
from pyengine.evaluation import EvalConfig, markdown_table, summarize
from pyengine.evaluation.report import write_report
from pyengine.evaluation.runner import Evaluation, load_records, plan_units, shard
from pyengine.models import ContrastiveHead


class StaticPGD:
    adaptive = False

    def __init__(self, model, eps):
        self.pgd = PGD(model, eps=eps, step_size=eps / 2, steps=2)

    def perturb(self, x, y, *, generator=None):
        return self.pgd.perturb(x, y, generator=generator)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    purifier = Purifier(model, ContrastiveHead(model.num_features, 16, 8), steps=2, bank=torch.randn(16, 8))
    gen = torch.Generator().manual_seed(0)
    data = ImageSet((torch.rand(7, 3, 16, 16, generator=gen) * 255).to(torch.uint8), torch.randint(0, 10, (7,), generator=gen))
    return purifier, data


def run(purifier, data, config, out, units=None):
    evaluation = Evaluation(purifier, data, config, out, lambda spec: StaticPGD(purifier.classifier, config.eps),
                            progress=False)
    evaluation.run(units if units is not None else plan_units(config, len(data)))
    return load_records(out, evaluation.config)  # the config keyed by the data's and weights' contents


def test_units_cover_every_image_once_across_shards():
    config = EvalConfig(attacks=["a", "b"], n=7, batch_size=3)
    units = plan_units(config, 100)
    assert [(u.start, u.stop) for u in units if u.attack == "a"] == [(0, 3), (3, 6), (6, 7)]
    merged = sorted(shard(units, 0, 2) + shard(units, 1, 2), key=lambda u: (u.attack, u.batch))
    assert merged == sorted(units, key=lambda u: (u.attack, u.batch))


def test_report_numbers_match_the_records_and_resume_gives_the_same_table(setup, tmp_path):
    purifier, data = setup
    config = EvalConfig(attacks=["pgd2"], n=7, batch_size=3)
    full = run(purifier, data, config, tmp_path / "full")
    summary = summarize(full, config)
    assert summary["images"] == 7
    expected = sum(r["purified"] for r in full["pgd2"]) / 7
    assert summary["attacks"]["pgd2"]["purified"] == pytest.approx(expected)
    table, results = write_report(tmp_path / "full", summary)
    assert "| pgd2 |" in table.read_text() and json.loads(results.read_text())["images"] == 7

    # An interrupted run: only the first shard's units, then the same command again.
    units = plan_units(config, len(data))
    run(purifier, data, config, tmp_path / "resumed", units=units[:2])
    resumed = summarize(run(purifier, data, config, tmp_path / "resumed"), config)
    assert resumed["attacks"] == summary["attacks"] and resumed["worst_case"] == summary["worst_case"]
    table_rows = lambda s: [line for line in markdown_table(s).splitlines() if line.startswith("|")]  # noqa: E731
    assert table_rows(resumed) == table_rows(summary)


def test_results_do_not_depend_on_batch_size(setup, tmp_path):
    purifier, data = setup
    a = run(purifier, data, EvalConfig(attacks=["pgd2"], n=7, batch_size=7), tmp_path / "a")
    b = run(purifier, data, EvalConfig(attacks=["pgd2"], n=7, batch_size=2), tmp_path / "b")
    for attack in a:
        assert [r["purified"] for r in a[attack]] == [r["purified"] for r in b[attack]]
        for ra, rb in zip(a[attack], b[attack]):
            assert ra["loss_purified"] == pytest.approx(rb["loss_purified"], abs=1e-5)


def test_another_configuration_in_the_same_folder_is_refused(setup, tmp_path):
    purifier, data = setup
    run(purifier, data, EvalConfig(attacks=["pgd2"], n=3, batch_size=3), tmp_path)
    with pytest.raises(ValueError, match="another configuration: seed \\(0 there, 1 now\\)") as refused:
        run(purifier, data, EvalConfig(attacks=["pgd3"], n=3, batch_size=3, seed=1), tmp_path)
    assert "attacks" not in str(refused.value)  # adding attacks to a run is allowed, never a difference


def test_an_added_attack_reuses_the_finished_units_and_other_purifier_settings_are_refused(setup, tmp_path):
    from pyengine.evaluation import evaluate

    purifier, data = setup
    config = EvalConfig(attacks=["pgd2"], n=3, batch_size=3)
    first = evaluate(purifier, data, config, tmp_path, progress=False)
    units = tmp_path / "units"
    written = {p.name: p.stat().st_mtime_ns for p in units.iterdir()}
    more = evaluate(purifier, data, EvalConfig(attacks=["pgd2", "pgd1"], n=3, batch_size=3), tmp_path, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in units.iterdir() if p.name in written} == written
    assert sorted(set(p.name for p in units.iterdir()) - set(written)) == ["pgd1__00000.json"]
    assert more["attacks"]["pgd2"] == first["attacks"]["pgd2"]
    purifier.steps = 1  # another purifier setting: its numbers must not mix with the steps=2 ones
    try:
        with pytest.raises(ValueError, match="another configuration: purifier .*steps=2.* there, .*steps=1.* now"):
            evaluate(purifier, data, config, tmp_path, progress=False)
    finally:
        purifier.steps = 2


def test_soap_min_aux_reports_an_oracle_column_that_bounds_min_aux(setup, tmp_path):
    from pyengine.soap import ConsistencyObjective, MinAuxPurifier

    purifier, data = setup
    soap = MinAuxPurifier(purifier.classifier, ConsistencyObjective(purifier.classifier), n_radii=2, steps=1)
    config = EvalConfig(attacks=["pgd2"], n=7, batch_size=7)
    records = run(soap, data, config, tmp_path)
    for rows in records.values():
        assert all(r["oracle"] or not r["purified"] for r in rows)  # the oracle may pick min-aux's radius
    summary = summarize(records, config)
    assert summary["attacks"]["pgd2"]["oracle"] >= summary["attacks"]["pgd2"]["purified"]
    assert "Oracle (upper bound, uses labels)" in markdown_table(summary)


def test_benchmark_entry_point_returns_the_robustbench_style_numbers(setup):
    import pyengine

    purifier, data = setup
    result = pyengine.benchmark(purifier, n_examples=5, data=data.subset(5), attacks=("fgsm", "transfer-fgsm"),
                                batch_size=5)
    assert set(result) == {"clean", "attacks", "worst_case", "static_baseline"}
    assert set(result["attacks"]) == {"fgsm", "transfer-fgsm"}
    assert result["worst_case"] <= min(result["clean"], *result["attacks"].values())
    with pytest.raises(ValueError, match="threat_model"):
        pyengine.benchmark(purifier, n_examples=5, data=data, threat_model="L1")


def test_results_document_puts_the_papers_numbers_beside_ours_and_names_missing_runs(setup, tmp_path):
    from pyengine.evaluation.paper import results_markdown

    purifier, data = setup
    config = EvalConfig(attacks=["pgd50"], n=7, batch_size=7)
    summary = summarize(run(purifier, data, config, tmp_path / "eval"), config)
    (tmp_path / "runs" / "adversarial").mkdir(parents=True)
    (tmp_path / "runs" / "adversarial" / "results.json").write_text(json.dumps(summary))
    text = results_markdown(tmp_path / "runs", "a test machine")
    ours = 100 * summary["attacks"]["pgd50"]["purified"]
    assert f"| pgd50 | static | {100 * summary['attacks']['pgd50']['standard']:.2f} | {ours:.2f} | 52.40 | 54.59 |" in text
    # Missing: 4 settings' static runs (Table 5 among them), 4 adaptive ones, SOAP's own attacks twice.
    assert "Not run yet (no" in text and text.count("Not run yet") == 10
    assert text.count("#### SOAP's Table 2 attacks as its code ran them") == 2
    assert "a test machine" in text and "7 CIFAR-10 test images" in text


def test_draw_fig2_redraws_a_figure_from_its_json_and_keeps_its_provenance(tmp_path):
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "old" / "fig2_loss_histograms.json"
    source.parent.mkdir()
    record = {"commit": "unknown", "device": "a CPU of 2026-11-27", "finished": "2026-11-27"}
    source.write_text(json.dumps({"clean": [6.0, 6.5], "attacked": [7.0, 7.5], "purified": [5.0, 5.5],
                                  "provenance": record}))
    # The checkout's pyengine, whatever (if anything) is installed: the script runs from scripts/.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(root / "scripts" / "draw_fig2.py"), str(source), str(tmp_path / "new")],
                          capture_output=True, text=True, cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    drawn = json.loads((tmp_path / "new" / "fig2_loss_histograms.json").read_text())
    assert (tmp_path / "new" / "fig2_loss_histograms.png").stat().st_size > 0
    assert drawn["provenance"] == record and drawn["attacked"] == [7.0, 7.5]
