"""The decoded-image cache: reused when nothing changed, rebuilt (in a new folder) when anything did."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import write_jpeg

import attrnet.data.cache as cache_mod
from attrnet.data import cache_files as files_mod
from attrnet.data.cache import decode_all, open_or_start
from attrnet.data.cache_files import remove_abandoned_builds
from attrnet.data.images import load_image


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


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so os.kill(pid, 0) finds no process."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _build_folder(root, pid: int, key: str = "0123456789abcdef01234567", pid_space: str | None = "here",
                  age_s: float = 0.0):
    """A build's temporary folder as a killed build leaves it: ".<key>.<pid>.tmp" with a half-written file."""
    folder = root / f".{key}.{pid}.tmp"
    folder.mkdir(parents=True)
    (folder / "images.npy").write_bytes(b"\0" * 1000)
    if pid_space is not None:
        (folder / "pid_space").write_text(files_mod._pid_space() if pid_space == "here" else pid_space)
    then = time.time() - age_s
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (then, then))
    return folder


def test_dead_builds_folders_are_removed_live_ones_kept(tmp_path, images):
    root = tmp_path / "cache"
    dead = _build_folder(root, _dead_pid())
    mine = _build_folder(root, os.getpid(), key="fedcba9876543210fedcba98")
    parent = _build_folder(root, os.getppid(), key="00000000000000000000000a")
    not_a_build = [root / ".notes.123.tmp", root / ".0123456789abcdef01234567.x.tmp"]
    for p in not_a_build:
        p.mkdir()

    out = decode_all(images, (8, 8), cache_root=root, progress=False)
    assert out.ok.all()
    assert not dead.exists()
    assert mine.is_dir() and parent.is_dir() and (mine / "images.npy").stat().st_size == 1000
    assert all(p.is_dir() for p in not_a_build)
    assert sorted(p.name for p in root.iterdir()) == sorted([out.path.name, mine.name, parent.name]
                                                            + [p.name for p in not_a_build])


def test_cleanup_also_runs_when_the_cache_exists(tmp_path, images, monkeypatch):
    root = tmp_path / "cache"
    decode_all(images, (8, 8), cache_root=root, progress=False)
    dead = _build_folder(root, _dead_pid())
    _forbid_build(monkeypatch)
    decode_all(images, (8, 8), cache_root=root, progress=False)
    assert not dead.exists()


def test_a_process_we_may_not_signal_counts_as_alive(tmp_path, monkeypatch):
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(files_mod.os, "kill", kill)
    folder = _build_folder(tmp_path, 1)
    assert remove_abandoned_builds(tmp_path) == []
    assert folder.is_dir()


def test_other_machines_builds_are_judged_by_age(tmp_path):
    # a pid of another host or pid namespace says nothing here: only a day without writes marks it abandoned
    pid = _dead_pid()
    day = files_mod.FOREIGN_BUILD_STALE_AFTER_S
    fresh = _build_folder(tmp_path, pid, key="a" * 24, pid_space="other-host pid:[1]", age_s=day - 600)
    old = _build_folder(tmp_path, pid, key="b" * 24, pid_space="other-host pid:[1]", age_s=day + 600)
    assert remove_abandoned_builds(tmp_path) == [old]
    assert fresh.is_dir() and not old.exists()


def test_unmarked_folders_get_a_grace_period(tmp_path):
    # no pid_space file: an older attrnet's folder, or one whose file a shared disk does not show yet
    pid = _dead_pid()
    grace = files_mod.UNMARKED_BUILD_GRACE_S
    new = _build_folder(tmp_path, pid, key="c" * 24, pid_space=None, age_s=grace - 60)
    old = _build_folder(tmp_path, pid, key="d" * 24, pid_space=None, age_s=grace + 60)
    assert remove_abandoned_builds(tmp_path) == [old]
    assert new.is_dir()


def test_a_build_under_way_survives_another_start(tmp_path, images):
    # two trainings sharing a cache: the second start's cleanup must not touch the first one's build
    root = tmp_path / "cache"
    build = open_or_start(images, (8, 8), cache_root=root, progress=False)
    assert isinstance(build, cache_mod.CacheBuild) and build.tmp.is_dir()
    assert remove_abandoned_builds(root) == []
    other = open_or_start(images[:3], (8, 8), cache_root=root, progress=False).finish()
    assert build.tmp.is_dir() and other.images.shape[0] == 3
    done = build.finish()
    assert done.ok.all() and not build.tmp.exists()
    np.testing.assert_array_equal(done.images[1], load_image(images[1], (8, 8)).numpy())


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
