"""Where a result came from: one record that every writer of results stores beside its numbers.

:func:`provenance` returns a JSON-ready dict:

- ``commit``: the git commit of the checkout this package runs from, or ``"unknown"`` (a wheel
  install, no git, or git refuses the folder); ``dirty``: whether tracked files differ from that
  commit when the record is made (None when unknown);
- ``command``: the command line (``pyengine eval ...``), absolute paths made relative;
- ``versions``: python, torch, pyengine and onnxruntime (None when not installed);
- ``device``: the GPU's name, or the CPU model with the threads torch uses and the vector ISA
  flags that decide its speed (:func:`pyengine.hardware.cpu_description`); ``processes``: the
  torch.distributed world size (1 without it);
- ``data``: the input's identity, ``{"digest": "sha256:<16 hex>", "images": N}``, never a path
  (None when there is no data set, e.g. random benchmark inputs);
- ``started``, ``finished``: UTC times, ISO 8601.

A record differs on every run, so it never enters a configuration digest: run folders are
keyed by what decides the numbers, and a resume must find the same key.

Paths are written relative to the repository (or, for a wheel install, the working
directory) by :func:`relative_path`: a committed result file must not name the folders of the
machine that made it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

NOT_RECORDED = "not recorded"
_IMPORTED = time.time()
_command: list[str] | None = None  # set by the CLI (record_command), which may run in-process


def provenance(*, data=None, started: str | float | dt.datetime | None = None, argv: list[str] | None = None,
               device=None) -> dict:
    """The record described in the module docstring.

    ``data``: an :class:`~pyengine.data.ImageSet`, a uint8/float Tensor[N, ...], a
    :class:`~pyengine.batch.ImageSource`, or a zip or folder of images (see :func:`data_identity`).
    ``started``: when the work began (ISO string, POSIX seconds or datetime); default: when
    this process started. ``argv``: the full command line (program first); default: the one
    :func:`record_command` set, else ``sys.argv``. ``device``: the ``torch.device`` (or its
    string) the work ran on; default: the current CUDA device if this process has used CUDA,
    else the CPU.
    """
    commit, dirty = git_state()
    return {
        "commit": commit,
        "dirty": dirty,
        "command": command_text(argv),
        "versions": versions(),
        "device": device_name(device),
        "processes": _world_size(),
        "data": data_identity(data) if data is not None else None,
        "started": _iso(_process_started() if started is None else started),
        "finished": _iso(time.time()),
    }


def utc_now() -> str:
    """Now, in the record's format: writers call it when their work begins (``started=``)."""
    return _iso(time.time())


@contextlib.contextmanager
def record_command(argv: list[str]):
    """Within the block, records name ``argv`` as the command line (the CLI runs in-process
    under tests and embedders, where ``sys.argv`` is someone else's)."""
    global _command
    previous, _command = _command, list(argv)
    try:
        yield
    finally:
        _command = previous


# --- the checkout -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def repository_root() -> Path | None:
    """The git checkout holding this package (its parent folder has ``.git``), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / ".git").exists() else None


def _git(*args: str) -> str | None:
    root = repository_root()
    if root is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs: the record says "unknown"
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str, bool | None]:
    """(commit, dirty): ``("unknown", None)`` outside a readable git checkout. Untracked
    files do not make the tree dirty (run folders and caches live in it)."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return "unknown", None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return head.strip(), None if status is None else bool(status.strip())


# --- paths and the command line -------------------------------------------------------------

def _base() -> Path:
    return repository_root() or Path.cwd()


def relative_path(path: str | os.PathLike) -> str:
    """``path`` as a record may hold it: relative to the repository (for a wheel install, the
    working directory) when it lies inside it or in a folder beside it (``../shared/data``);
    otherwise ``<elsewhere>/<name>``, since the rest would only name this machine's folders.
    Relative paths are kept as given."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return Path(text).as_posix()
    absolute, base = os.path.normpath(text), _base()
    try:
        relative = os.path.relpath(absolute, base)
    except ValueError:  # another drive (Windows)
        relative = None
    # Relative to the file system's root would be the absolute path again.
    if relative is not None and base.parent != base and Path(relative).parts.count("..") <= 1:
        return Path(relative).as_posix()
    return f"<elsewhere>/{Path(absolute).name}"


# An absolute path inside free text (a manifest's "CIFAR-10 from /data/cifar10"): a slash at
# the start of a word, or a drive letter.
_ABSOLUTE_IN_TEXT = re.compile(r"""(?<![^\s=`'"(])(/[^\s`'"(),;]+|[A-Za-z]:\\[^\s`'"(),;]+)""")


def relative_text(text: str) -> str:
    """``text`` with every absolute path in it rewritten by :func:`relative_path`."""
    return _ABSOLUTE_IN_TEXT.sub(lambda m: relative_path(m.group(1)), text)


def command_text(argv: list[str] | None = None) -> str:
    """The command line as one shell-quoted string, the program shortened (``pyengine``,
    ``python -m pytest``) and absolute paths made relative (``--out=/x`` included)."""
    import shlex

    argv = [str(a) for a in (argv if argv is not None else _command if _command is not None else sys.argv)]
    if not argv:
        return NOT_RECORDED
    program = Path(argv[0])
    if program.name == "__main__.py":  # python -m <package>
        program_text = "pyengine" if program.parent.name == "pyengine" else f"python -m {program.parent.name}"
    else:  # a script: its name, not where it is installed
        program_text = program.name or argv[0]
    args = []
    for arg in argv[1:]:
        option, eq, value = arg.partition("=")
        args.append(f"{option}={relative_text(value)}" if eq and option.startswith("-") else relative_text(arg))
    return " ".join([program_text, *map(shlex.quote, args)])


# --- the software and the device ------------------------------------------------------------

def versions() -> dict:
    import torch

    def installed(*names: str) -> str | None:
        for name in names:
            with contextlib.suppress(metadata.PackageNotFoundError):
                return metadata.version(name)
        return None

    from . import __version__

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "pyengine": installed("pyengine") or __version__,
            # The version from the package metadata: importing onnxruntime takes seconds.
            "onnxruntime": installed("onnxruntime", "onnxruntime-gpu")}


def device_name(device=None) -> str:
    """``NVIDIA H200``, or e.g. ``AMD EPYC 7B13, 2 threads, avx2`` for the CPU."""
    import torch

    from .hardware import cpu_description

    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_description()
    return device.type


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# --- the data ---------------------------------------------------------------------------

def data_identity(data) -> dict:
    """``{"digest": "sha256:<16 hex>", "images": N}`` of the loaded tensors (ImageSet: images
    and labels; a Tensor: itself), or of an image folder's or zip's contents (ImageSource,
    or its path): a zip by its members' names, sizes and CRC-32s from the central directory,
    a folder by its image files' names and bytes. Cheap next to the work it describes."""
    from .data import IMAGE_SUFFIXES

    from .resume import tensor_digest

    if hasattr(data, "images") and hasattr(data, "labels"):  # ImageSet
        return {"digest": f"sha256:{tensor_digest(data.images, data.labels)}", "images": int(data.labels.numel())}
    if hasattr(data, "shape") and hasattr(data, "dtype"):  # a Tensor
        return {"digest": f"sha256:{tensor_digest(data)}", "images": int(data.shape[0]) if data.dim() else 1}
    digest = hashlib.sha256()
    location = Path(getattr(data, "location", data))
    wanted = set(getattr(data, "paths", ()))  # an ImageSource's images; else every image file
    keep = (lambda name: name in wanted) if wanted else (lambda name: name.lower().endswith(IMAGE_SUFFIXES))
    count = 0
    if location.is_file():
        with zipfile.ZipFile(location) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if keep(info.filename):
                    digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
                    count += 1
    else:
        for file in sorted(p for p in location.rglob("*") if p.is_file()):
            name = file.relative_to(location).as_posix()
            if keep(name):
                digest.update(f"{name}\0{file.stat().st_size}\n".encode())
                digest.update(file.read_bytes())
                count += 1
    return {"digest": _short(digest), "images": count}


def _short(digest) -> str:
    return f"sha256:{digest.hexdigest()[:16]}"


# --- times ------------------------------------------------------------------------------

def _process_started() -> float:
    """When this process started (Linux: /proc), else when this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def _iso(when: str | float | dt.datetime) -> str:
    if isinstance(when, str):
        return when
    if not isinstance(when, dt.datetime):
        when = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- what reports print ---------------------------------------------------------------------

def record_of(payload: dict | None) -> dict | None:
    """The record stored in a result (``payload["provenance"]``), None for older files."""
    record = (payload or {}).get("provenance")
    return record if isinstance(record, dict) else None


def device_of(payload: dict | None) -> str:
    """The device column of a table: the record's device, ``not recorded`` for older files."""
    return (record_of(payload) or {}).get("device") or NOT_RECORDED


def footer(record: dict | None) -> str:
    """One line for a report or figure: commit, device, date, e.g. ``commit 660045a (with
    uncommitted changes) · NVIDIA H200 · 2025-01-31 14:02 UTC``."""
    if not record:
        return f"Provenance {NOT_RECORDED}."
    commit = str(record.get("commit") or "unknown")
    commit = commit[:7] if commit != "unknown" else commit
    if record.get("dirty"):
        commit += " (with uncommitted changes)"
    when = str(record.get("finished") or record.get("started") or "")
    date = f"{when[:10]} {when[11:16]} UTC" if len(when) >= 16 else when or "date not recorded"
    processes = record.get("processes") or 1
    device = record.get("device") or NOT_RECORDED
    return f"commit {commit} · {device}{f' x {processes} processes' if processes > 1 else ''} · {date}"
