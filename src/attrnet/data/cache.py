"""Decoded-image cache: every image decoded and resized once, into a uint8 memory-mapped array.

Keyed by the files (path, size, mtime), the image size, the colour mode and the resize method, so a
change to any of them builds a new cache. Decoding runs in parallel worker processes that write each
image straight into the memory-mapped file, so peak memory stays small whatever the data set's size and the
pixels never pass through the main process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from attrnet.atomic import pid_alive
from attrnet.data.images import load_image
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: PNG/GIF/WebP through PIL (grey and 16-bit PNGs, GIF frames), crop of extreme strips
# A build's temporary folder, ".<key>.<pid>.tmp" (see CacheBuild), and the file in it that says where that
# pid is meaningful (see _pid_space).
_BUILD_FOLDER = re.compile(r"\.(?P<key>[0-9a-f]{24})\.(?P<pid>[0-9]+)\.tmp")
_PID_SPACE_FILE = "pid_space"
# A build folder of another machine or container (a cache on a shared disk) is judged by age, as its pid means
# nothing here: a live build writes rows every few seconds, so a day without a write means its builder is gone.
FOREIGN_BUILD_STALE_AFTER_S = 24 * 3600
# A folder without its pid_space file is either an older attrnet's or one made a moment ago (the file is
# written right after the folder, and a shared disk may show it late): the latter gets this long.
UNMARKED_BUILD_GRACE_S = 300


@dataclass
class DecodedImages:
    """images: uint8 [N, C, H, W] (memory-mapped); ok: bool [N], False where a file could not be decoded;
    device_images: the same pixels in a device's memory when the cache was decoded there (data.device_cache)."""

    images: np.ndarray
    ok: np.ndarray
    path: Path | None = None
    device_images: Any = None

    @property
    def n_bad(self) -> int:
        return int((~self.ok).sum())


class _DecodeInto(Dataset):
    """Decodes image i straight into row i of the memory-mapped cache file (opened once per worker process),
    so only the index and a success flag travel back to the main process, never the pixels."""

    def __init__(self, paths: list[Path], size: tuple[int, int], grayscale: bool, resize: str, out: Path):
        self.paths, self.size, self.grayscale, self.resize, self.out = paths, size, grayscale, resize, out
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, bool]:
        if self._images is None:
            self._images = np.load(self.out, mmap_mode="r+")
        try:
            img = load_image(self.paths[i], self.size, self.grayscale, self.resize)
        except Exception:  # a broken or truncated file: counted, never fatal here (its row stays zeros)
            return i, False
        self._images[i] = img.numpy()
        return i, True


def default_cache_root() -> Path:
    return Path(os.environ.get("ATTRNET_CACHE", Path.home() / ".cache" / "attrnet"))


def cache_key(paths: list[Path], size: tuple[int, int], grayscale: bool, resize: str, decoder: str = "cpu") -> str:
    """A digest of everything the decoded pixels depend on (decoder: "cpu", or the device decoder's name:
    nvJPEG's pixels differ from libjpeg-turbo's by a level here and there)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, list(size), grayscale, resize] + ([decoder] if decoder != "cpu" else [])).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\0missing\n".encode())
    return h.hexdigest()[:24]


def decode_all(paths: list[Path], size: tuple[int, int], grayscale: bool = False, resize: str = "squash",
               cache_root: str | Path | None = None, workers: int = 0, progress: bool = True) -> DecodedImages:
    """Return the decoded images of `paths`, building the cache on first use (in cache_root)."""
    found = open_or_start(paths, size, grayscale, resize, cache_root, workers, progress)
    return found if isinstance(found, DecodedImages) else found.finish()


def open_or_start(paths: list[Path], size: tuple[int, int], grayscale: bool = False, resize: str = "squash",
                  cache_root: str | Path | None = None, workers: int = 0, progress: bool = True,
                  first: Callable[[], list[np.ndarray]] | None = None, decode_device=None) -> "DecodedImages | CacheBuild":
    """The cache when it exists; otherwise a CacheBuild already decoding, rows of the batches first()
    gives (lists of row indices) before all others, in that order. decode_device (a GPU, RGB only): decode
    there, into that device's memory (data.device_cache.DeviceCacheBuild), and keep a cache of its own."""
    root = Path(cache_root) if cache_root else default_cache_root()
    decoder = f"{decode_device.type}-decode" if decode_device is not None else "cpu"
    key = cache_key(paths, size, grayscale, resize, decoder)
    remove_abandoned_builds(root)
    if (root / key / "meta.json").is_file():
        return _open(root / key)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AttrnetError(f"cannot create the image cache in {root} ({exc.strerror}); "
                           f"set data.cache_dir or ATTRNET_CACHE") from None
    order = first() if first else []
    if decode_device is not None:
        from attrnet.data.device_cache import DeviceCacheBuild
        return DeviceCacheBuild(root, key, paths, size, resize, decode_device, progress, order)
    return _build(root, key, paths, size, grayscale, resize, workers, progress, order)


def remove_abandoned_builds(root: Path) -> list[Path]:
    """Remove the temporary folders of cache builds whose process was killed (they are never published, and
    one can hold gigabytes); returns them. A folder of a live process is another build under way (two
    trainings may share a cache) and stays. A reused pid keeps a dead build's folder: the safe mistake."""
    try:
        candidates = [(f, int(m["pid"])) for f in root.iterdir() if (m := _BUILD_FOLDER.fullmatch(f.name))]
    except OSError:  # no cache folder yet, or an unreadable one: nothing to clean here
        return []
    removed = []
    for folder, pid in candidates:
        if folder.is_dir() and _is_abandoned(folder, pid):
            log.info("removing %s, left behind by an interrupted cache build", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _is_abandoned(folder: Path, pid: int) -> bool:
    try:
        space = (folder / _PID_SPACE_FILE).read_text()
    except OSError:
        return _idle_seconds(folder) > UNMARKED_BUILD_GRACE_S and not pid_alive(pid)
    if space == _pid_space():
        return not pid_alive(pid)
    return _idle_seconds(folder) > FOREIGN_BUILD_STALE_AFTER_S


def _pid_space() -> str:
    """Where this process's pid means something: the host and (on Linux) the pid namespace, as containers
    that share a host name (docker --network host) each count their pids from 1."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()


def _idle_seconds(folder: Path) -> float:
    try:
        last_write = max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
    except OSError:  # removed meanwhile (a concurrent cleanup or publish): leave it to whoever did that
        return 0.0
    return time.time() - last_write


def _build(root: Path, key: str, paths, size, grayscale, resize, workers, progress, first) -> "CacheBuild":
    return CacheBuild(root, key, paths, size, grayscale, resize, workers, progress, first)


class CacheBuild:
    """A cache being built in a temporary folder by decode worker processes, batch after batch in a set
    order, so a consumer can read rows as soon as they are decoded (`wait`): the first training epoch then
    overlaps the decoding instead of following it. `finish()` decodes what is left and publishes the cache
    (an atomic rename); `abort()` removes the temporary folder.

    images: the memory-mapped array being filled; ok: bool [N], True once a row decoded successfully.
    """

    def __init__(self, root: Path, key: str, paths: list[Path], size: tuple[int, int], grayscale: bool,
                 resize: str, workers: int, progress: bool, first: list[np.ndarray]):
        self.folder, self.tmp = root / key, new_build_folder(root, key)
        self.size, self.grayscale, self.resize = size, grayscale, resize
        n = len(paths)
        out = self.tmp / "images.npy"
        np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8,
                                  shape=(n, 1 if grayscale else 3, *size)).flush()
        self.images = np.load(out, mmap_mode="r")
        self.ok = np.zeros(n, dtype=bool)
        self.done = np.zeros(n, dtype=bool)
        batches = decode_order(n, first)
        workers = workers or (os.cpu_count() or 1)
        parallel = n > 256 and workers > 1
        loader = DataLoader(_DecodeInto(paths, size, grayscale, resize, out), batch_sampler=batches,
                            num_workers=workers if parallel else 0, collate_fn=_collate,
                            persistent_workers=False, prefetch_factor=4 if parallel else None)
        self._batches = iter(loader)
        self._bar = tqdm(total=n, desc=f"decoding {n} images", unit="img", disable=not progress, leave=False)

    @property
    def n_bad(self) -> int:
        return int((self.done & ~self.ok).sum())

    def _advance(self) -> bool:
        try:
            idx, good = next(self._batches)
        except StopIteration:
            return False
        self.ok[idx] = good
        self.done[idx] = True
        self._bar.update(len(idx))
        return True

    def wait(self, idx: np.ndarray) -> np.ndarray:
        """Block until rows idx are decoded; returns their ok flags."""
        while not self.done[idx].all():
            if not self._advance():
                raise RuntimeError("cache build ended before every row was decoded")
        return self.ok[idx]

    def finish(self) -> DecodedImages:
        """Decode every remaining row, publish the cache, and return it."""
        try:
            while self._advance():
                pass
            self._bar.close()
            publish(self.tmp, self.folder, self.ok, {"size": list(self.size), "grayscale": self.grayscale,
                                                     "resize": self.resize})
        finally:
            self.abort()
        return _open(self.folder)

    def abort(self) -> None:
        self._batches = iter(())  # shuts the decode workers down
        self._bar.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def new_build_folder(root: Path, key: str) -> Path:
    """A fresh temporary folder for building cache `key`, marked with where our pid means something."""
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / _PID_SPACE_FILE).write_text(_pid_space())  # lets another process judge our pid (_is_abandoned)
    return tmp


def decode_order(n: int, first: list[np.ndarray]) -> list[np.ndarray]:
    """Batches of row indices to decode: `first`'s (the first epoch's) in their order, then the rest by 64."""
    first = [np.asarray(b, dtype=np.int64) for b in first if len(b)]
    seen = np.zeros(n, dtype=bool)
    for b in first:
        seen[b] = True
    rest = np.flatnonzero(~seen)
    return first + [rest[i:i + 64] for i in range(0, len(rest), 64)]


def publish(tmp: Path, folder: Path, ok: np.ndarray, meta: dict) -> None:
    """Make a built cache visible: its pixels on disk first, then its flags and meta.json, then one atomic
    rename (a half-built cache is never seen as complete)."""
    fd = os.open(tmp / "images.npy", os.O_RDONLY)
    try:  # the writers' pages reach the disk before the cache is declared complete
        os.fsync(fd)
    finally:
        os.close(fd)
    np.save(tmp / "ok.npy", ok)
    (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "n": len(ok), **meta,
                                               "bad": int((~ok).sum())}))
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "meta.json").is_file():  # not a concurrent builder that won the race
            raise


def _collate(items):
    return (np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items)),
            np.fromiter((g for _, g in items), dtype=bool, count=len(items)))


def _open(folder: Path) -> DecodedImages:
    images = np.load(folder / "images.npy", mmap_mode="r")
    ok = np.load(folder / "ok.npy")
    return DecodedImages(images=images, ok=ok, path=folder)
