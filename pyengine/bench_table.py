"""``pyengine bench``: the engine vs the published loop, from a pytest-benchmark JSON file
written by ``bench/test_bench_purify.py`` (several files may be given, e.g. one per model or
machine). Each row names its device from the results' provenance record; files written
before the record existed fall back to their ``device`` field, else ``not recorded``."""
from __future__ import annotations

import json
from pathlib import Path

from .provenance import NOT_RECORDED, footer

VARIANT = "variant:"
# The levers one by one, each adding one (issue 17), as PYENGINE_BENCH_VARIANTS on the CPU:
# fp32 eager, bf16, + channels_last, + batch-norm folding, + early exit, + compile (warmed up).
CPU_ABLATION = ("fp32-eager,bf16-eager,bf16-nhwc-eager,bf16-nhwc-fold-eager,bf16-nhwc-fold-exit-eager,"
                "bf16-nhwc-fold-exit-eager-compile")
TOKENS = ("nhwc", "fold", "exit", "eager", "graph", "compile")


def parse_variant(name: str, *, early_exit=None) -> dict:
    """A variant of bench/test_bench_purify.py -> Purifier keyword arguments: a precision
    (auto, fp32, bf16, fp16), then ``-``-joined tokens: ``nhwc`` channels_last, ``fold``
    batch-norm folding, ``exit`` early exit (with ``early_exit``), ``eager`` or ``graph`` the
    loop, ``compile`` torch.compile (the benchmark warms it up). What is not named is off."""
    from .purify.purifier import PRECISIONS

    precision, *rest = name.split("-")
    if precision not in ("auto", *PRECISIONS) or set(rest) - set(TOKENS) or ("exit" in rest and early_exit is None):
        raise ValueError(f"variant {name!r}: expected a precision of auto, {', '.join(PRECISIONS)} then tokens of "
                         f"{', '.join(TOKENS)} (exit needs an early-exit rule)")
    return {"precision": precision, "channels_last": "nhwc" in rest, "cuda_graph": "graph" in rest,
            "compile": "compile" in rest, "fold_batchnorm": "fold" in rest,
            "early_exit": early_exit if "exit" in rest else None}


def load_rows(*paths: str | Path) -> list[dict]:
    """One row per (model, K, batch, device): each path's mean seconds per purification call
    (``engine``, ``published``, ``variant:<name>``), peak GPU memory where recorded, and the
    provenance records of its results (``records``)."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for bench in json.loads(Path(path).read_text()).get("benchmarks", []):
            info = bench.get("extra_info", {})
            name = info.get("path", "")
            if name not in ("engine", "published") and not name.startswith(VARIANT):
                continue
            record = info.get("provenance") if isinstance(info.get("provenance"), dict) else None
            device = (record or {}).get("device") or info.get("device") or NOT_RECORDED
            # The device is part of the key: timings of two machines never share a row.
            key = (info["model"], info["steps"], info["batch"], device)
            row = rows.setdefault(key, {"model": key[0], "steps": key[1], "batch": key[2], "device": device,
                                        "flops_per_image": info["flops_per_image"], "memory_mib": {},
                                        "records": []})
            row[name] = bench["stats"]["mean"]
            if "mean_steps" in info:
                row.setdefault("mean_steps", {})[name] = info["mean_steps"]
            if "peak_memory_mib" in info:
                row["memory_mib"][name] = info["peak_memory_mib"]
            if record:
                row["records"].append(record)
    if not rows:
        raise ValueError(f"{', '.join(map(str, paths))} hold no results of bench/test_bench_purify.py")
    return [rows[k] for k in sorted(rows)]


def _rate(row: dict, seconds: float | None) -> str:
    return f"{row['batch'] / seconds:.1f}" if seconds else "—"


def _memory(row: dict, name: str) -> str:
    mib = row["memory_mib"].get(name)
    return f"{mib / 1024:.2f} GiB" if mib is not None else "—"


def provenance_lines(rows: list[dict]) -> list[str]:
    """One footer per (commit, device) the rows were measured at, with the latest date."""
    latest: dict[tuple, dict] = {}
    for record in (rec for r in rows for rec in r["records"]):
        key = (record.get("commit"), record.get("dirty"), record.get("device"), record.get("processes"))
        if key not in latest or str(record.get("finished", "")) > str(latest[key].get("finished", "")):
            latest[key] = record
    if not latest:
        return [f"Provenance {NOT_RECORDED} (benchmark files written before the record existed)."]
    return [f"Provenance: {footer(record)}." for record in latest.values()]


def markdown(rows: list[dict], peak_tflops: float | None = None) -> str:
    """The side-by-side table, then the ablation of the engine's levers when variants were run,
    then where the numbers were measured."""
    head = ("| model | device | K | batch | engine latency | engine images/s | published latency "
            "| published images/s | speed-up | engine TFLOP/s |" + (" fraction of peak |" if peak_tflops else "")
            + " engine / published peak memory |")
    lines = [head, "|" + " --- |" * (12 if peak_tflops else 11)]
    for r in rows:
        engine, published = r.get("engine"), r.get("published")
        tflops = r["flops_per_image"] * r["batch"] / engine / 1e12 if engine else None
        cells = [r["model"], r["device"], str(r["steps"]), str(r["batch"]),
                 f"{1000 * engine:.1f} ms" if engine else "—", _rate(r, engine),
                 f"{1000 * published:.1f} ms" if published else "—", _rate(r, published),
                 f"{published / engine:.2f}x" if engine and published else "—",
                 f"{tflops:.3f}" if tflops is not None else "—"]
        if peak_tflops:
            cells.append(f"{tflops / peak_tflops:.1%}" if tflops is not None else "—")
        cells.append(f"{_memory(r, 'engine')} / {_memory(r, 'published')}")
        lines.append("| " + " | ".join(cells) + " |")
    # In the order they were run (PYENGINE_BENCH_VARIANTS lists them lever by lever).
    variants = list(dict.fromkeys(k[len(VARIANT):] for r in rows for k in r if k.startswith(VARIANT)))
    if variants:
        lines += ["", "Ablation (images/s, speed-up over the published loop; precision, nhwc: channels_last, fold: "
                  "batch-norm folding, exit: early exit (mean steps per image), eager or graph loop, compile: "
                  "warmed up):", "",
                  "| model | device | K | batch | published | default | " + " | ".join(variants) + " |",
                  "|" + " --- |" * (len(variants) + 6)]
        for r in rows:
            cells = [_ablation_cell(r, "published"), _ablation_cell(r, "engine")]
            cells += [_ablation_cell(r, VARIANT + v) for v in variants]
            lines.append(f"| {r['model']} | {r['device']} | {r['steps']} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *provenance_lines(rows)])


def _ablation_cell(row: dict, name: str) -> str:
    seconds, published = row.get(name), row.get("published")
    if not seconds:
        return "—"
    cell = _rate(row, seconds)
    if published and name != "published":
        cell += f" ({published / seconds:.2f}x)"
    steps = row.get("mean_steps", {}).get(name)
    return cell + (f", {steps:.1f} steps" if steps is not None else "")
