"""The data a lent GPU machine gets: ``train.zip`` whole and as much of ``test.zip`` as fits.

A device call carries the working tree and the named folders, at most 64 MiB together. The
JPEG copy is 62 MB (train 52, test 10) and the repository several more, so the test split
travels as a prefix of its interleaved class order: the first N images of every evaluation
(1,000 static, 200 adaptive) are then exactly those of the full test set. The members'
bytes are copied unchanged.
"""
from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import torch

from ..data import CIFAR10_CLASSES, DataError, IMAGE_SUFFIXES, _interleave_order

MIB = 1 << 20


def tree_bytes(repo: Path) -> int:
    """Bytes of what a device call sends of ``repo``: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((repo / name.decode()).stat().st_size for name in listed
               if name and (repo / name.decode()).is_file())


def path_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare(data: Path, out: Path, *, repo: Path = Path("."), also: tuple[Path, ...] = (),
            limit_bytes: int = 64 * MIB, margin_bytes: int = 2 * MIB, log=print) -> int:
    """Write ``out/train.zip`` (a copy) and ``out/test.zip`` (the longest class-balanced
    prefix that keeps the call under ``limit_bytes`` with ``repo``'s tree, the ``also``
    folders and a margin). Returns the number of test images; raises DataError below 1,000."""
    train, test = Path(data) / "train.zip", Path(data) / "test.zip"
    for path in (train, test):
        if not path.is_file():
            raise DataError(f"{path} not found: the carry is made from the JPEG copy's train.zip and test.zip")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "train.zip").is_file() or (out / "train.zip").stat().st_size != train.stat().st_size:
        shutil.copyfile(train, out / "train.zip")
    # The carried folder is inside the repository and ignored, so only its zips count once.
    budget = (limit_bytes - margin_bytes - tree_bytes(repo) - sum(path_bytes(p) for p in also)
              - train.stat().st_size)
    with zipfile.ZipFile(test) as zf:
        members = sorted(m for m in zf.namelist() if m.lower().endswith(IMAGE_SUFFIXES))
        labels = [CIFAR10_CLASSES.index(m.split("/")[-2]) for m in members]
        order = _interleave_order(torch.tensor(labels)).tolist()
        infos = [zf.getinfo(members[i]) for i in order]
        cost = [info.compress_size + 30 + 46 + 2 * len(info.filename) for info in infos]  # local + central headers
        n, used = 0, 22  # the end-of-directory record
        while n < len(infos) and used + cost[n] <= budget:
            used += cost[n]
            n += 1
        n -= n % len(CIFAR10_CLASSES)
        if n < 1000:
            raise DataError(f"only {n} test images fit beside the repository ({tree_bytes(repo) / MIB:.1f} MiB) "
                            f"and train.zip in {limit_bytes / MIB:.0f} MiB; the evaluations need 1,000")
        tmp = out / "test.zip.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as subset:
            for info in infos[:n]:
                subset.writestr(info.filename, zf.read(info))
        tmp.replace(out / "test.zip")
    log(f"wrote {out}/train.zip ({train.stat().st_size / MIB:.1f} MiB) and {out}/test.zip: the first {n} of "
        f"{len(infos)} test images in class-interleaved order ({(out / 'test.zip').stat().st_size / MIB:.1f} MiB)")
    return n
