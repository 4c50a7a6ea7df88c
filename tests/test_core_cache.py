"""The decoded-image cache: reused when nothing changed, rebuilt (in a new folder) when anything did."""

from __future__ import annotations

import os

import numpy as np
import pytest

import attrnet.data.cache as cache_mod
from attrnet.data.cache import decode_all
from attrnet.data.images import load_image
from conftest import write_jpeg


@pytest.fixture
def images(tmp_path):
    return [write_jpeg(tmp_path / "img" / f"{i}.jpg", seed=i, size=(20, 14)) for i in range(4)]


@pytest.fixture
def counted_build(monkeypatch):
    """Count calls to the cache builder (the decoding step)."""
    calls = []
    real = cache_mod._build

    def build(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "_build", build)
    return calls


def _forbid_build(monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("decoded again although the cache should have been used")
    monkeypatch.setattr(cache_mod, "_build", build)


def test_second_decode_uses_the_cache(tmp_path, images, monkeypatch, counted_build):
    root = tmp_path / "cache"
    first = decode_all(images, (16, 12), cache_root=root, progress=False)
    assert len(counted_build) == 1
    assert first.images.shape == (4, 3, 16, 12) and first.images.dtype == np.uint8
    assert first.ok.all() and first.n_bad == 0
    # the cached pixels are what load_image gives
    np.testing.assert_array_equal(first.images[2], load_image(images[2], (16, 12)).numpy())
    assert [p.name for p in root.iterdir()] == [first.path.name]  # no temp folder left behind

    _forbid_build(monkeypatch)
    second = decode_all(images, (16, 12), cache_root=root, progress=False)
    assert second.path == first.path
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    np.testing.assert_array_equal(second.ok, first.ok)


def test_changes_build_a_new_cache(tmp_path, images, monkeypatch, counted_build):
    root = tmp_path / "cache"
    base = decode_all(images, (16, 16), cache_root=root, progress=False)
    folders = {base.path}

    other_size = decode_all(images, (12, 16), cache_root=root, progress=False)
    assert other_size.images.shape == (4, 3, 12, 16)
    grey = decode_all(images, (16, 16), grayscale=True, cache_root=root, progress=False)
    assert grey.images.shape == (4, 1, 16, 16)
    cropped = decode_all(images, (16, 16), resize="crop", cache_root=root, progress=False)
    assert not np.array_equal(np.asarray(cropped.images), np.asarray(base.images))
    subset = decode_all(images[:3], (16, 16), cache_root=root, progress=False)
    assert subset.images.shape[0] == 3
    for d in (other_size, grey, cropped, subset):
        assert d.path not in folders
        folders.add(d.path)
    assert len(counted_build) == 5

    # new bytes in one file: a new cache whose row for that file changed and whose other rows did not
    write_jpeg(images[1], seed=99, size=(20, 14))
    changed = decode_all(images, (16, 16), cache_root=root, progress=False)
    assert changed.path not in folders
    folders.add(changed.path)
    assert not np.array_equal(changed.images[1], base.images[1])
    np.testing.assert_array_equal(changed.images[[0, 2, 3]], base.images[[0, 2, 3]])

    # the same bytes, only a new modification time: rebuilt too
    st = os.stat(images[3])
    os.utime(images[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = decode_all(images, (16, 16), cache_root=root, progress=False)
    assert touched.path not in folders
    assert len(counted_build) == 7
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 7

    # and nothing changed since: no decoding
    _forbid_build(monkeypatch)
    again = decode_all(images, (16, 16), cache_root=root, progress=False)
    assert again.path == touched.path


def test_unreadable_file_is_marked_not_ok(tmp_path, images):
    images[0].write_bytes(b"\xff\xd8\xff\xe0 broken")
    out = decode_all(images, (8, 8), cache_root=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(out.ok, [False, True, True, True])
    assert out.n_bad == 1
    assert not out.images[0].any()  # zeros in its place


def test_parallel_workers_write_every_image_into_its_own_row(tmp_path):
    # over 256 images: decoded by 2 worker processes, each writing straight into the memory-mapped file
    paths = [write_jpeg(tmp_path / "img" / f"{i:03d}.jpg", seed=i, size=(12, 10)) for i in range(300)]
    paths[123].write_bytes(b"not a jpeg")
    out = decode_all(paths, (8, 8), cache_root=tmp_path / "cache", workers=2, progress=False)
    assert out.images.shape == (300, 3, 8, 8) and out.n_bad == 1 and not out.ok[123]
    assert not out.images[123].any()
    for i in (0, 1, 64, 122, 124, 255, 299):
        np.testing.assert_array_equal(out.images[i], load_image(paths[i], (8, 8)).numpy())
    assert len({out.images[i].tobytes() for i in range(300) if i != 123}) == 299  # no row written twice


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_batched_resize_equals_one_image_at_a_time(resize):
    import torch
    from attrnet.data.images import resize_image, resize_images
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 218, 178), (3, 109, 89), (3, 218, 178), (3, 64, 64), (3, 109, 89)]
    images = [torch.randint(0, 256, s, dtype=torch.uint8, generator=gen) for s in shapes]
    batched = resize_images(images, (128, 96), resize)
    assert len(batched) == len(images)
    for img, out in zip(images, batched):
        assert torch.equal(out, resize_image(img, (128, 96), resize))
