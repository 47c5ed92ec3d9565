"""The ordered steps of the papers' run (see :mod:`pyengine.gpu_pipeline.plan` for the order)."""
from __future__ import annotations

from pathlib import Path

from ..resume import write_atomic
from .bench import bench_steps
from .costs import eval_seconds, train_seconds
from .plan import SETTINGS, Layout, Scale, Step, evaluated

MAX_CHECKPOINT_BYTES = 25_000_000  # the limit per committed checkpoint
SMALL_STEP_S = 5.0  # an in-process step (publish a checkpoint, write the tables)


def build_steps(scale: Scale, layout: Layout, settings: list[str], *, device: str, source: Path, cache: Path,
                counts: dict[str, int], compile: bool = False, command: str = "") -> list[Step]:
    """The plan for ``settings`` (names of SETTINGS, any order), in priority order.

    ``source``: the folder of train.zip and test.zip; ``cache``: the CIFAR-10 cache file the
    data step decodes them into; ``counts``: the images per split (for estimates);
    ``command``: the pipeline's own command line, recorded in every published checkpoint
    beside the commands that trained it."""
    from ..data_cache import build_cache

    common = ["--device", device, "--data", str(cache)]
    n_train = min(counts["train"], scale.limit or counts["train"])
    n_test = min(counts["test"], scale.test_limit or counts["test"])

    def train(name: str) -> list[Step]:
        setting = SETTINGS[name]
        recipe = scale.recipes["soap" if setting.soap else name]
        out = layout.trained(name) if setting.soap else layout.classifier(name)
        published = layout.published(setting, scale)
        argv = ["train-classifier", "--model", scale.soap_model if setting.soap else scale.model,
                "--epochs", str(recipe["epochs"]), "--batch-size", str(recipe["batch_size"]),
                "--lr", str(recipe["lr"]), "--precision", scale.precision, "--out", str(out), *common,
                *setting.train_flags, *(["--compile"] if compile else [])]
        argv += ["--limit", str(scale.limit)] if scale.limit else []
        argv += ["--test-limit", str(scale.test_limit)] if scale.test_limit else []

        def train_cost(rates):
            total, epoch = train_seconds(recipe["epochs"], n_train, n_test, rates[f"train/{name}"])
            return rates["startup"] + total, rates["startup"] + epoch

        steps = [Step(f"train {name}", "train", lambda: published.is_file() or out.is_file()
                      or layout.trained(name).is_file(), train_cost, argv=argv)]
        if not setting.soap:
            head = scale.head
            n_head = min(n_train, head["limit"])
            argv = ["train-head", "--checkpoint", str(out), "--out", str(layout.trained(name)),
                    "--epochs", str(head["epochs"]), "--limit", str(head["limit"]),
                    "--batch-size", str(head["batch_size"]), "--lr", str(head["lr"]), "--views", str(head["views"]),
                    "--precision", scale.precision, *common]
            steps.append(Step(f"head {name}", "train",
                              lambda: published.is_file() or layout.trained(name).is_file(),
                              lambda r: (r["startup"] + head["epochs"] * n_head / r["head"],
                                         r["startup"] + n_head / r["head"]),
                              argv=argv, needs=(f"train {name}",)))
        steps.append(Step(f"publish {name}", "publish", published.is_file, lambda r: (SMALL_STEP_S, None),
                          action=lambda: publish_checkpoint(layout.trained(name), published, command),
                          needs=(steps[-1].name,), outputs=(published,)))
        return steps

    def evaluation(name: str, kind: str) -> Step:
        setting = SETTINGS[name]
        adaptive = kind in ("adaptive-fast", "adaptive")
        n, batch = (scale.n_adaptive, scale.adaptive_batch) if adaptive else (scale.n_static, scale.static_batch)
        static = list(scale.static) + (list(scale.soap_static) if setting.soap else [])
        lists = {"static": (static, static), "autoattack": (static + list(scale.heavy), list(scale.heavy)),
                 "figures": (static + list(scale.heavy), []),
                 "adaptive-fast": (list(scale.adaptive_fast), list(scale.adaptive_fast)),
                 "adaptive": (list(scale.adaptive_fast) + list(scale.adaptive_full), list(scale.adaptive_full))}
        attacks, new = lists[kind]
        out, report = layout.eval_dir(name, adaptive), layout.published_eval(name, adaptive)
        published = layout.published(setting, scale)
        argv = ["eval", "--checkpoint", str(published), "--attacks", ",".join(attacks), "--n", str(n),
                "--batch-size", str(batch), "--out", str(out), *common]
        argv += ["--steps", str(scale.purify_steps)] if scale.purify_steps else []
        k = scale.purify_steps or (5 * 11 if setting.soap else 40)  # SOAP: T steps at each of 11 radii
        every, new = _expanded(attacks), _expanded(new)
        prior = [a for a in every if a not in new]

        def attack_cost(r):
            """The new attacks; all of them when the earlier ones were published by another
            machine, whose per-unit files this one lacks (reports are published, units are not)."""
            redo = bool(prior) and evaluated(report, prior) and not evaluated(out, prior)
            total, unit = eval_seconds(every if redo else new, n, batch, r, setting=name, steps=k,
                                       with_clean=redo or not prior)
            return r["startup"] + total, r["startup"] + unit

        if kind == "figures":
            argv += ["--figures", str(scale.figures)]
            done = (report / "figures" / "fig4_lambda_tradeoff.png").is_file

            def cost(r):  # about 20 purifications (sweeps over eps, eps_v, K) and 8 x 10 aware-PGD steps
                seconds = 20 * scale.figures / r["purify"] + 400 * scale.figures / r["grad"]
                return attack_cost(r)[0] + seconds, None
        else:
            done = lambda: evaluated(report, attacks)  # noqa: E731
            cost = attack_cost
        needs = (f"publish {name}",) + ((f"eval {name} autoattack",) if kind == "figures" else ())
        return Step(f"eval {name} {kind}", "eval", done, cost, argv=argv, needs=needs, outputs=(report,),
                    after=lambda: publish_report(out, report))

    mao = [s for s in ("adversarial", "standard") if s in settings]
    soap = [s for s in ("soap_lc", "soap_rp") if s in settings]
    cache_step = Step("data", "data", cache.is_file,
                      lambda r: (sum(counts.values()) / r.get("decode", 1000.0) + 1.0, None),
                      action=lambda: build_cache(source, layout.cache_dir()))
    steps = [cache_step]
    for name in mao + soap:
        steps += train(name)
    for group in (mao, soap):
        steps += [evaluation(s, kind) for kind in ("static", "adaptive-fast", "autoattack") for s in group]
    if "adversarial" in mao and scale.figures:
        steps.append(evaluation("adversarial", "figures"))
    steps += [evaluation(s, "adaptive") for s in mao + soap]
    steps += bench_steps(layout, smoke=scale.name == "smoke", device=device, cache=cache, n_test=counts["test"])
    for step in steps:
        if step.stage != "data":
            step.needs = ("data",) + step.needs
    return steps


def _expanded(attacks: list[str]) -> list[str]:
    from ..attacks import expand_specs

    return expand_specs(attacks)


def publish_checkpoint(trained: Path, published: Path, command: str) -> None:
    """``trained`` (fp32) as fp16 at ``published``, with the pipeline's command beside the
    training commands its manifest records; refused beyond MAX_CHECKPOINT_BYTES."""
    from ..models.checkpoint import CheckpointError, convert_checkpoint
    from ..provenance import relative_path, relative_text

    tmp = published.with_name(published.name + ".publishing")
    # Paths as the repository sees them: a shipped manifest names no folder of the machine.
    convert_checkpoint(trained, tmp, dtype="float16", trained_as=relative_path(trained),
                       published_by=relative_text(command or "python3 -m pyengine.gpu_pipeline run"))
    size = tmp.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        tmp.unlink()
        raise CheckpointError(f"{published.name} would be {size / 1e6:.1f} MB in fp16, over the "
                              f"{MAX_CHECKPOINT_BYTES / 1e6:.0f} MB a committed checkpoint may take")
    tmp.replace(published)


def published_paths(steps: list[Step]) -> list[Path]:
    """Everything the steps published that exists: the list to commit (and to carry back)."""
    seen: list[Path] = []
    for step in steps:
        for path in step.outputs:
            if path.exists() and path not in seen:
                seen.append(path)
    return seen


def summary_rows(steps: list[Step], rates: dict, budget: float | None) -> list[str]:
    """The estimate table printed before the run: each step, its estimate, the running sum."""
    rows = ["| step | state | estimate | running total |", "| --- | --- | ---: | ---: |"]
    total = 0.0
    for step in steps:
        if step.done():
            rows.append(f"| {step.name} | done | — | — |")
            continue
        seconds = step.cost(rates)[0]
        total += seconds
        late = " (past the deadline)" if budget is not None and total > budget else ""
        rows.append(f"| {step.name} | to do | {_duration(seconds)} | {_duration(total)}{late} |")
    by_stage: dict[str, float] = {}
    for step in steps:
        if not step.done():
            by_stage[step.stage] = by_stage.get(step.stage, 0.0) + step.cost(rates)[0]
    rows += ["", "by stage: " + ", ".join(f"{k} {_duration(v)}" for k, v in by_stage.items())]
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def publish_report(run: Path, report: Path) -> None:
    """Copy an evaluation's report (not its per-unit files) to its published folder."""
    import shutil

    report.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "table.md", "results.json"):  # results.json last: it marks the copy done
        if (run / name).is_file():
            write_atomic(report / name, (run / name).read_bytes())
    if (run / "figures").is_dir():
        shutil.copytree(run / "figures", report / "figures", dirs_exist_ok=True)
