"""``pyengine bench``: the engine vs the published loop, from a pytest-benchmark JSON file
written by ``bench/test_bench_purify.py`` (several files may be given, e.g. one per model)."""
from __future__ import annotations

import json
from pathlib import Path

VARIANT = "variant:"


def load_rows(*paths: str | Path) -> list[dict]:
    """One row per (model, K, batch): each path's mean seconds per purification call
    (``engine``, ``published``, ``variant:<name>``) and peak GPU memory where recorded."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for bench in json.loads(Path(path).read_text()).get("benchmarks", []):
            info = bench.get("extra_info", {})
            name = info.get("path", "")
            if name not in ("engine", "published") and not name.startswith(VARIANT):
                continue
            key = (info["model"], info["steps"], info["batch"])
            row = rows.setdefault(key, {"model": key[0], "steps": key[1], "batch": key[2], "device": info["device"],
                                        "flops_per_image": info["flops_per_image"], "memory_mib": {}})
            row[name] = bench["stats"]["mean"]
            if "peak_memory_mib" in info:
                row["memory_mib"][name] = info["peak_memory_mib"]
    if not rows:
        raise ValueError(f"{', '.join(map(str, paths))} hold no results of bench/test_bench_purify.py")
    return [rows[k] for k in sorted(rows)]


def _rate(row: dict, seconds: float | None) -> str:
    return f"{row['batch'] / seconds:.1f}" if seconds else "—"


def _memory(row: dict, name: str) -> str:
    mib = row["memory_mib"].get(name)
    return f"{mib / 1024:.2f} GiB" if mib is not None else "—"


def markdown(rows: list[dict], peak_tflops: float | None = None) -> str:
    """The side-by-side table, then the ablation of the engine's levers when variants were run."""
    head = ("| model | K | batch | engine latency | engine images/s | published latency | published images/s "
            "| speed-up | engine TFLOP/s |" + (" fraction of peak |" if peak_tflops else "")
            + " engine / published peak memory |")
    lines = [f"Device: {rows[0]['device']}", "", head, "|" + " --- |" * (11 if peak_tflops else 10)]
    for r in rows:
        engine, published = r.get("engine"), r.get("published")
        tflops = r["flops_per_image"] * r["batch"] / engine / 1e12 if engine else None
        cells = [r["model"], str(r["steps"]), str(r["batch"]),
                 f"{1000 * engine:.1f} ms" if engine else "—", _rate(r, engine),
                 f"{1000 * published:.1f} ms" if published else "—", _rate(r, published),
                 f"{published / engine:.2f}x" if engine and published else "—",
                 f"{tflops:.3f}" if tflops is not None else "—"]
        if peak_tflops:
            cells.append(f"{tflops / peak_tflops:.1%}" if tflops is not None else "—")
        cells.append(f"{_memory(r, 'engine')} / {_memory(r, 'published')}")
        lines.append("| " + " | ".join(cells) + " |")
    variants = sorted({k[len(VARIANT):] for r in rows for k in r if k.startswith(VARIANT)})
    if variants:
        lines += ["", "Ablation (images/s; precision, layout, loop):", "",
                  "| model | K | batch | " + " | ".join(variants) + " | published |",
                  "|" + " --- |" * (len(variants) + 4)]
        for r in rows:
            cells = [_rate(r, r.get(VARIANT + v)) for v in variants] + [_rate(r, r.get("published"))]
            lines.append(f"| {r['model']} | {r['steps']} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
