"""Resumable runs: a run folder belongs to one configuration, and every file in it is
written whole, so a killed run can be continued by running the same command again.

A configuration is keyed by content, not names: callers hash the inputs' bytes
(:func:`tensor_digest`), the weights (:func:`weights_digest`) and the settings, and
:func:`claim` records them in ``config.json``. The claim is exclusive (the file is created
with ``link``, or ``O_EXCL`` where the file system has no hard links), so of two runs
racing into one empty folder exactly one records its configuration and the other is
compared with it. A run folder holds no symbolic links: pyengine writes only inside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable

# How long a reader waits for a config.json that another process is still writing (only
# where the file system has no hard links and the claim falls back to O_EXCL + write).
_CONFIG_WAIT_S = 2.0


class RunFolderError(ValueError):
    """A run folder holds the results of another configuration, or cannot be used."""


def _tmp_name(path: Path) -> Path:
    # Unique per process and thread: two writers of one file never share a temporary file.
    return path.with_name(f"{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")


def _write_new(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path`` (never through an existing file or link), ``write(file)``, flush to disk."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)  # left by a killed process that had this pid
    try:
        _write_new(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file that is flushed to disk and renamed over it:
    ``path`` is either complete or absent, and a link at ``path`` is replaced, not followed."""
    raw = data if isinstance(data, bytes) else data.encode()
    _replace_atomically(path, lambda f: f.write(raw))


def save_atomic(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` as :func:`write_atomic` writes: a kill mid-write
    leaves the previous file, never a truncated one (resume states, the data cache)."""
    import torch

    _replace_atomically(path, lambda f: torch.save(obj, f))


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 4 MiB chunks (weights files, data zips)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_digest(*tensors) -> str:
    """16 hex digits of sha256 over the tensors' dtypes, shapes and values (any device)."""
    digest = hashlib.sha256()
    for i, tensor in enumerate(tensors):
        _hash_tensor(digest, str(i), tensor)
    return digest.hexdigest()[:16]


def weights_digest(module) -> str:
    """16 hex digits of sha256 over a module's parameters and buffers (names, dtypes, shapes,
    values): the same weights give the same digest from whichever path they were loaded, and
    a checkpoint replaced at the same path gives another."""
    digest = hashlib.sha256()
    for name, tensor in sorted([*module.named_parameters(), *module.named_buffers()], key=lambda kv: kv[0]):
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()[:16]


def _hash_tensor(digest, name: str, tensor) -> None:
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\n".encode())
    digest.update(flat.view(torch.uint8).numpy())


def prepare(out: str | Path) -> Path:
    """Create the run folder ``out`` (a link to a folder is accepted) or raise RunFolderError
    when it is a file, cannot be created, or holds a symbolic link."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder; choose a folder for the run's results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {out}: {err.strerror or err}") from err
    link = _first_link(out)
    if link is not None:
        raise RunFolderError(f"{link} is a symbolic link inside the run folder {out}; pyengine writes only into "
                             "the folder itself and does not follow links: remove the link or choose a new --out")
    return out


def _first_link(folder: Path) -> Path | None:
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    return Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return None


def claim(out: Path, digest: str, settings: dict, *, unhashed: tuple[str, ...] = ()) -> None:
    """Record ``settings`` (hashed as ``digest``, but for the ``unhashed`` keys) in
    ``out/config.json``, or raise RunFolderError naming the settings that differ when the
    folder holds another configuration's results (or is unusable, see :func:`prepare`).

    Exclusive: every rank of a torchrun launch may call it at once (same digest); of two
    different configurations racing, one wins and the other is refused."""
    out = prepare(out)
    path = out / "config.json"
    text = json.dumps({"digest": digest, **settings}, indent=2, default=str).encode()
    try:
        created = _create_exclusive(path, text)
    except OSError as err:
        raise RunFolderError(f"cannot write in the run folder {out}: {err.strerror or err}") from err
    if created:
        return
    previous = _read_config(path)
    if previous.get("digest") == digest:
        return
    current = json.loads(json.dumps(settings, default=str))  # compared as stored
    changed = settings_differences(previous, current, ignore=("digest", *unhashed))
    raise RunFolderError(f"{out} holds results of another configuration: {'; '.join(changed) or 'other inputs'} "
                         f"(hash {previous.get('digest')} != {digest}); choose a new --out")


def settings_differences(previous: dict, current: dict, *, ignore=()) -> list[str]:
    """``key ('old' there, 'new' now)`` for every key whose value differs (``ignore`` aside),
    sorted: what a refusal to resume names."""
    return [f"{key} ({previous.get(key, 'not recorded')!r} there, {current.get(key, 'not recorded')!r} now)"
            for key in sorted((set(previous) | set(current)) - set(ignore)) if previous.get(key) != current.get(key)]


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; -> whether this call created it.

    A hard link of a complete temporary file makes creation and content one atomic step,
    so a reader never sees a half-written file; without hard links, ``O_EXCL``."""
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)
    _write_new(tmp, lambda f: f.write(data))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # e.g. a file system without hard links
        try:
            _write_new(path, lambda f: f.write(data))
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def _read_config(path: Path) -> dict:
    deadline = time.monotonic() + _CONFIG_WAIT_S
    while True:
        try:
            previous = json.loads(path.read_text())
            if isinstance(previous, dict):
                return previous
            error = f"expected a JSON object, got {type(previous).__name__}"
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            error = str(err)
        # Only a file written within the last moments may still be growing (the O_EXCL fallback).
        if time.monotonic() > deadline or time.time() - path.stat().st_mtime > _CONFIG_WAIT_S:
            raise RunFolderError(f"{path} is corrupt ({error}); it records which configuration the folder's "
                                 "results belong to: choose a new --out (or delete the folder)")
        time.sleep(0.05)
