"""Resumable runs: a run folder belongs to one configuration, and every file in it is
written whole, so a killed run can be continued by running the same command again."""
from __future__ import annotations

import json
import os
from pathlib import Path


class RunFolderError(ValueError):
    """A run folder holds the results of another configuration."""


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file: it is either complete or absent."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    tmp.replace(path)


def claim(out: Path, digest: str, settings: dict, *, unhashed: tuple[str, ...] = ()) -> None:
    """Record ``settings`` (hashed as ``digest``, but for the ``unhashed`` keys) in
    ``out/config.json``, or raise RunFolderError naming the settings that differ when the
    folder holds another configuration's results."""
    path = out / "config.json"
    if not path.exists():
        # Every rank may get here first; the content is identical.
        write_atomic(path, json.dumps({"digest": digest, **settings}, indent=2, default=str))
        return
    previous = json.loads(path.read_text())
    if previous.get("digest") == digest:
        return
    current = json.loads(json.dumps(settings, default=str))  # compared as stored
    changed = [f"{key} ({previous.get(key, 'not recorded')!r} there, {current.get(key, 'not recorded')!r} now)"
               for key in sorted((set(previous) | set(current)) - {"digest", *unhashed})
               if previous.get(key) != current.get(key)]
    raise RunFolderError(f"{out} holds results of another configuration: {'; '.join(changed) or 'other inputs'} "
                         f"(hash {previous.get('digest')} != {digest}); choose a new --out")
