"""The decoded CIFAR-10 cache: equal to the zips, keyed by their content, never stale."""
from __future__ import annotations

import pytest
import torch

from cifar_zips import write_cifar_zips
from pyengine.data import DataError, ImageSet, load_cifar10
from pyengine.data_cache import build_cache, cache_path, load_cache, source_digest


@pytest.fixture()
def zips(tmp_path):
    return write_cifar_zips(tmp_path / "cifar10")


def test_the_cache_holds_exactly_what_the_zips_decode_to(zips, tmp_path):
    path = build_cache(zips, tmp_path / "cache")
    assert path == cache_path(tmp_path / "cache", source_digest(zips))
    for split in ("train", "test"):
        direct = load_cifar10(zips, split)
        cached = load_cifar10(path, split)  # any command's --data takes the cache file
        assert torch.equal(cached.images, direct.images) and torch.equal(cached.labels, direct.labels)
        assert cached.images.dtype == torch.uint8
        limited = load_cifar10(path, split, limit=7)
        assert torch.equal(limited.images, load_cifar10(zips, split, limit=7).images)


def test_an_existing_cache_is_reused_and_other_zips_get_their_own(zips, tmp_path):
    first = build_cache(zips, tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert build_cache(zips, tmp_path / "cache") == first and first.stat().st_mtime_ns == stamp
    write_cifar_zips(zips, test_per_class=2, seed=1)  # other content, same names
    second = build_cache(zips, tmp_path / "cache")
    assert second != first
    assert len(load_cache(second, "test")) == 20


def test_a_cache_whose_digest_does_not_match_is_rebuilt_not_reused(zips, tmp_path):
    path = cache_path(tmp_path / "cache", source_digest(zips))
    path.parent.mkdir(parents=True)
    wrong = ImageSet(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    torch.save({"format": 1, "digest": source_digest(zips)[:16] + "0" * 48,  # the name's prefix, not the digest
                "train_images": wrong.images, "train_labels": wrong.labels,
                "test_images": wrong.images, "test_labels": wrong.labels}, path)
    messages = []
    assert build_cache(zips, tmp_path / "cache", log=messages.append) == path
    assert messages and "other zips" in messages[0]
    assert torch.equal(load_cache(path, "test").images, load_cifar10(zips, "test").images)


def test_corrupt_or_foreign_cache_files_are_refused_with_a_data_error(zips, tmp_path):
    path = build_cache(zips, tmp_path / "cache")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt CIFAR-10 cache"):
        load_cifar10(path, "train")
    renamed = tmp_path / "cache" / "cifar10-0123456789abcdef.pt"
    build_cache(zips, tmp_path / "other").rename(renamed)
    with pytest.raises(DataError, match="which its name does not carry"):
        load_cache(renamed, "test")
    with pytest.raises(DataError, match="train.zip and test.zip"):
        source_digest(tmp_path / "nowhere")


def test_an_image_set_moves_to_a_device_whole():
    data = ImageSet(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.arange(3))
    moved = data.to("cpu")
    assert torch.equal(moved.images, data.images) and moved.labels.device.type == "cpu"
