"""Decoded-image cache: every image decoded and resized once, into a uint8 memory-mapped array.

Keyed by the files (path, size, mtime), the image size, the colour mode and the resize method, so a
change to any of them builds a new cache. Decoding runs in parallel worker processes that write each
image straight into the memory-mapped file, so peak memory stays small whatever the data set's size and the
pixels never pass through the main process.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import DataLoader, Dataset

from attrnet.data.cache_files import (
    DecodedImages,
    RowBuild,
    cache_key,
    decode_order,
    default_cache_root,
    new_build_folder,
    open_cache,
    publish,
    remove_abandoned_builds,
)
from attrnet.data.device_cache import DeviceCacheBuild
from attrnet.data.images import load_image
from attrnet.errors import AttrnetError
from attrnet.progress import progress_bar

log = logging.getLogger(__name__)
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
        return open_cache(root / key)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AttrnetError(f"cannot create the image cache in {root} ({exc.strerror}); "
                           f"set data.cache_dir or ATTRNET_CACHE") from None
    order = first() if first else []
    if decode_device is not None:
        return DeviceCacheBuild(root, key, paths, size, resize, decode_device, progress, order)
    return _build(root, key, paths, size, grayscale, resize, workers, progress, order)


def _build(root: Path, key: str, paths, size, grayscale, resize, workers, progress, first) -> "CacheBuild":
    return CacheBuild(root, key, paths, size, grayscale, resize, workers, progress, first)


class CacheBuild(RowBuild):
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
        self._bar = progress_bar(total=n, desc=f"decoding {n} images", unit="img", disable=not progress, leave=False)

    def _advance(self) -> bool:
        try:
            idx, good = next(self._batches)
        except StopIteration:
            return False
        self.ok[idx] = good
        self.done[idx] = True
        self._bar.update(len(idx))
        return True

    def finish(self) -> DecodedImages:
        """Decode every remaining row, publish the cache, and return it."""
        try:
            self._decode_rest()
            publish(self.tmp, self.folder, self.ok, {"size": list(self.size), "grayscale": self.grayscale,
                                                     "resize": self.resize})
        finally:
            self.abort()
        return open_cache(self.folder)

    def abort(self) -> None:
        self._batches = iter(())  # shuts the decode workers down
        self._bar.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _collate(items):
    return (np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items)),
            np.fromiter((g for _, g in items), dtype=bool, count=len(items)))


