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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from attrnet.data.images import load_image
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class DecodedImages:
    """images: uint8 [N, C, H, W] (memory-mapped); ok: bool [N], False where a file could not be decoded."""

    images: np.ndarray
    ok: np.ndarray
    path: Path | None = None

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


def cache_key(paths: list[Path], size: tuple[int, int], grayscale: bool, resize: str) -> str:
    """A digest of everything the decoded pixels depend on."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, list(size), grayscale, resize]).encode())
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
    root = Path(cache_root) if cache_root else default_cache_root()
    key = cache_key(paths, size, grayscale, resize)
    folder = root / key
    if (folder / "meta.json").is_file():
        return _open(folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AttrnetError(f"cannot create the image cache in {root} ({exc.strerror}); "
                           f"set data.cache_dir or ATTRNET_CACHE") from None
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(tmp, paths, size, grayscale, resize, workers, progress)
        try:
            os.replace(tmp, folder)  # atomic: a half-built cache is never seen as complete
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(folder)


def _build(folder: Path, paths: list[Path], size: tuple[int, int], grayscale: bool, resize: str,
           workers: int, progress: bool) -> None:
    channels = 1 if grayscale else 3
    n = len(paths)
    out = folder / "images.npy"
    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(n, channels, *size)).flush()
    ok = np.zeros(n, dtype=bool)
    workers = workers or (os.cpu_count() or 1)
    parallel = n > 256 and workers > 1
    loader = DataLoader(_DecodeInto(paths, size, grayscale, resize, out), batch_size=64, shuffle=False,
                        num_workers=workers if parallel else 0, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if parallel else None)
    with tqdm(total=n, desc=f"decoding {n} images", unit="img", disable=not progress, leave=False) as bar:
        for idx, good in loader:
            ok[idx] = good
            bar.update(len(idx))
    np.save(folder / "ok.npy", ok)
    meta = {"version": CACHE_VERSION, "n": n, "size": list(size), "grayscale": grayscale, "resize": resize,
            "bad": int((~ok).sum())}
    (folder / "meta.json").write_text(json.dumps(meta))


def _collate(items):
    return (np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items)),
            np.fromiter((g for _, g in items), dtype=bool, count=len(items)))


def _open(folder: Path) -> DecodedImages:
    images = np.load(folder / "images.npy", mmap_mode="r")
    ok = np.load(folder / "ok.npy")
    return DecodedImages(images=images, ok=ok, path=folder)
