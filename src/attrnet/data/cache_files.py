"""The decoded-image cache on disk, and what every way of building one shares (a CPU build with worker
processes: attrnet.data.cache; a build on the training GPU: attrnet.data.device_cache).

A cache is a folder named by its key (a digest of everything the pixels depend on) holding images.npy (uint8
[N, C, H, W]), ok.npy (which rows decoded) and meta.json, written last. A build fills a temporary folder,
".<key>.<pid>.tmp", and publishes it with one atomic rename; a build killed part-way leaves its folder,
which the next start removes.
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
from typing import Any

import numpy as np

from attrnet.atomic import pid_alive

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 2: PNG/GIF/WebP through PIL (grey and 16-bit PNGs, GIF frames), crop of extreme strips;
                   # 3: photos turned upright by their EXIF orientation, BMP and TIFF decoded
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


class RowBuild:
    """A cache being decoded batch by batch in a set order (the first epoch's batches first), so a consumer can
    read rows as soon as they are decoded: `wait(idx)` decodes until rows idx are done. Subclasses decode one
    batch per `_advance()` (False when none is left) and keep `ok` (decoded well) and `done` (decoded), bool [N],
    and a progress bar `_bar`."""

    ok: np.ndarray
    done: np.ndarray

    @property
    def n_bad(self) -> int:
        return int((self.done & ~self.ok).sum())

    def _advance(self) -> bool:
        raise NotImplementedError

    def wait(self, idx: np.ndarray) -> np.ndarray:
        """Block until rows idx are decoded; returns their ok flags."""
        while not self.done[idx].all():
            if not self._advance():
                raise RuntimeError("cache build ended before every row was decoded")
        return self.ok[idx]

    def _decode_rest(self) -> None:
        while self._advance():
            pass
        self._bar.close()


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


def open_cache(folder: Path) -> DecodedImages:
    images = np.load(folder / "images.npy", mmap_mode="r")
    ok = np.load(folder / "ok.npy")
    return DecodedImages(images=images, ok=ok, path=folder)
