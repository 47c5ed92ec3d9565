"""Running the plan: skip what is done, estimate the rest, stop cleanly before a deadline.

A step is started only when it fits the time left: a resumable step (training resumes per
epoch, evaluation per unit of images and attack) when one unit of it fits, any other when
all of it does. A running step gets the time left as its limit; a step stopped there keeps
what it finished (every state file and unit is written whole, then renamed), and the same
command continues it. A few seconds are kept back for the tables and the list of files to
commit, which are written whatever happened.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from .plan import Step

EXIT_INCOMPLETE = 3  # stopped by the deadline (or waiting on such a step): rerun to continue
RESERVE_S = 15.0  # kept back from the deadline for the tables, the file list and shutting down


def execute(step: Step, timeout: float | None) -> str:
    """Run one step: "ok", "failed" or "timeout". A command runs as its own process (a crash
    or a kill at the deadline leaves this one running); an action, and a command's ``after``
    (publishing its report), run here."""
    if step.argv is not None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
        if step.before is not None:
            step.before()
        try:
            proc = subprocess.run([sys.executable, "-m", step.module, *step.argv], timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return "timeout"
        if proc.returncode != 0:
            return "failed"
    actions = [a for a in (step.action, step.after) if a is not None]
    try:
        for action in actions:
            action()
    except (OSError, ValueError) as err:  # data, checkpoint and file errors; a bug's TypeError propagates
        print(f"   {step.name}: {type(err).__name__}: {err}", flush=True)
        return "failed"
    return "ok"


def schedule(steps: list[Step], rates: dict, *, deadline: float | None, skip: Callable[[Step], bool] = lambda s: False,
             run: Callable[[Step, float | None], str] = execute, clock: Callable[[], float] = time.monotonic,
             log: Callable[[str], None] = print) -> dict[str, str]:
    """Run ``steps`` in order; returns each one's state: "done" (before this run), "ran",
    "failed", "timeout" (stopped at the deadline, resumable), "no time" (not started),
    "blocked" (a step it needs is not done) or "skipped" (``skip``: not a chosen stage)."""
    status: dict[str, str] = {}
    for step in steps:
        if step.done():
            status[step.name] = "done"
            log(f"-- {step.name}: done, skipped")
            continue
        if skip(step):
            status[step.name] = "skipped"
            log(f"-- {step.name}: not a chosen stage ({step.stage})")
            continue
        waiting = [name for name in step.needs if status.get(name, "done") not in ("done", "ran")]
        if waiting:
            status[step.name] = "blocked"
            log(f"-- {step.name}: not started, it needs {', '.join(waiting)}")
            continue
        total, unit = step.cost(rates)
        left = None if deadline is None else deadline - clock()
        need = total if unit is None else unit
        if left is not None and left < need:
            status[step.name] = "no time"
            what = "one epoch or unit" if unit is not None else "the whole step"
            log(f"-- {step.name}: not started: {what} needs about {need:.0f} s, {max(left, 0):.0f} s left")
            continue
        env = "".join(f"{k}={v} " for k, v in step.env.items())
        command = f"\n   {env}python3 -m {step.module} {' '.join(step.argv)}" if step.argv else ""
        log(f"== {step.name}: about {total:.0f} s"
            + ("" if left is None else f" ({left:.0f} s left)") + command)
        start = clock()
        result = run(step, left)
        if result == "ok" and not step.done():
            log(f"   {step.name} exited without writing its output")
            result = "failed"
        status[step.name] = "ran" if result == "ok" else result
        note = "; its finished epochs or units are kept: rerun to continue" if result == "timeout" else ""
        log(f"== {step.name}: {status[step.name]} in {clock() - start:.0f} s{note}")
    return status


def exit_code(status: dict[str, str]) -> int:
    """1 when a step failed; EXIT_INCOMPLETE when work is left for lack of time; else 0."""
    states = set(status.values())
    if "failed" in states:
        return 1
    if states & {"timeout", "no time", "blocked"}:
        return EXIT_INCOMPLETE
    return 0
