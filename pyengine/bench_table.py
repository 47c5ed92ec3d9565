"""``pyengine bench``: the engine vs the published loop, from a pytest-benchmark JSON file
written by ``bench/test_bench_purify.py``."""
from __future__ import annotations

import json
from pathlib import Path


def load_rows(path: str | Path) -> list[dict]:
    """One row per (model, K, batch) with both paths' mean seconds per purification call."""
    payload = json.loads(Path(path).read_text())
    rows: dict[tuple, dict] = {}
    for bench in payload.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("path") not in ("engine", "published"):
            continue
        key = (info["model"], info["steps"], info["batch"])
        row = rows.setdefault(key, {"model": key[0], "steps": key[1], "batch": key[2],
                                    "device": info["device"], "flops_per_image": info["flops_per_image"]})
        row[info["path"]] = bench["stats"]["mean"]
    if not rows:
        raise ValueError(f"{path} holds no results of bench/test_bench_purify.py")
    return [rows[k] for k in sorted(rows)]


def markdown(rows: list[dict], peak_tflops: float | None = None) -> str:
    head = ("| model | K | batch | engine latency | engine images/s | published latency | published images/s "
            "| speed-up | engine TFLOP/s |" + (" fraction of peak |" if peak_tflops else ""))
    lines = [f"Device: {rows[0]['device']}", "", head, "|" + " --- |" * (10 if peak_tflops else 9)]
    for r in rows:
        engine, published = r.get("engine"), r.get("published")
        rate = lambda s: f"{r['batch'] / s:.1f}" if s else "—"  # noqa: E731
        tflops = r["flops_per_image"] * r["batch"] / engine / 1e12 if engine else None
        cells = [r["model"], str(r["steps"]), str(r["batch"]),
                 f"{1000 * engine:.1f} ms" if engine else "—", rate(engine),
                 f"{1000 * published:.1f} ms" if published else "—", rate(published),
                 f"{published / engine:.2f}x" if engine and published else "—",
                 f"{tflops:.3f}" if tflops is not None else "—"]
        if peak_tflops:
            cells.append(f"{tflops / peak_tflops:.1%}" if tflops is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
