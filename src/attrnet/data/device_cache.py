"""Building the decoded-image cache on the training GPU: the first epoch's cold start at the GPU's speed.

A CPU build decodes with worker processes into a memory-mapped file, which the loaders then copy to the GPU
batch by batch. When the training device is a GPU and the cache will be kept in its memory anyway
(setup.images_for_device), DeviceCacheBuild decodes there instead: a thread pool reads the files' bytes ahead,
each batch of 64 is decoded and resized on the GPU in one call (data.device_decode: nvJPEG's batched decoder)
straight into the device-resident cache the loaders slice, in the first epoch's batch order, as the training
asks for rows (`wait`, the same contract as cache.CacheBuild). `finish()` decodes what is left and writes the
pixels to the disk cache in large chunks (so the next run opens it like any other; the key says which decoder
made it), and the device copy stays with the returned DecodedImages for this run's loaders.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from attrnet.data.cache_files import DecodedImages, RowBuild, decode_order, new_build_folder, open_cache, publish
from attrnet.data.device_decode import decode_batch, read_encoded
from attrnet.progress import progress_bar

READ_AHEAD = 8           # batches whose files are being read while one is decoded
CHUNK_ROWS = 4096        # rows per device-to-host copy when the cache is written to disk


class DeviceCacheBuild(RowBuild):
    """images: uint8 [N, 3, H, W] on `device`, filled as rows are decoded; ok / done: bool [N] (host)."""

    def __init__(self, root: Path, key: str, paths: list[Path], size: tuple[int, int], resize: str,
                 device: torch.device, progress: bool, first: list[np.ndarray]):
        self.folder, self.root, self.key = root / key, root, key
        self.paths, self.size, self.resize, self.device = list(paths), size, resize, torch.device(device)
        n = len(self.paths)
        self.images = torch.zeros((n, 3, *size), dtype=torch.uint8, device=self.device)
        self.ok = np.zeros(n, dtype=bool)
        self.done = np.zeros(n, dtype=bool)
        self._batches = decode_order(n, first)
        self._next = 0
        self._pool = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="attrnet-read")
        self._reads: dict[int, list] = {}
        self._bar = progress_bar(total=n, desc=f"decoding {n} images on {self.device}", unit="img", disable=not progress,
                         leave=False)

    def _read_ahead(self) -> None:
        for b in range(self._next, min(self._next + READ_AHEAD, len(self._batches))):
            if b not in self._reads:
                self._reads[b] = [self._pool.submit(read_encoded, self.paths[i]) for i in self._batches[b]]

    def _advance(self) -> bool:
        """Decode the next batch into its rows; False when every batch is done."""
        if self._next >= len(self._batches):
            return False
        self._read_ahead()
        idx = self._batches[self._next]
        encoded = [f.result() for f in self._reads.pop(self._next)]
        self._next += 1
        pixels, ok = decode_batch(encoded, self.size, self.resize, self.device)
        rows = torch.from_numpy(idx)
        if self.device.type == "cuda":
            rows = rows.pin_memory()
        self.images.index_copy_(0, rows.to(self.device, non_blocking=True), pixels)
        self.ok[idx], self.done[idx] = ok, True
        self._bar.update(len(idx))
        return True

    def finish(self) -> DecodedImages:
        """Decode what is left, write the disk cache, and return it with the device copy attached."""
        self._decode_rest()
        self._pool.shutdown(wait=False)
        existing = open_cache(self.folder) if (self.folder / "meta.json").is_file() else None
        if existing is None:  # another process may have published the same cache meanwhile
            tmp = new_build_folder(self.root, self.key)
            try:
                out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                                shape=tuple(self.images.shape))
                for start in range(0, len(self.images), CHUNK_ROWS):
                    out[start:start + CHUNK_ROWS] = self.images[start:start + CHUNK_ROWS].cpu().numpy()
                out.flush()
                del out
                publish(tmp, self.folder, self.ok, {"size": list(self.size), "grayscale": False,
                                                    "resize": self.resize, "decoder": f"{self.device.type}-decode"})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; left over if that failed
            existing = open_cache(self.folder)
        existing.device_images = self.images
        return existing

    def abort(self) -> None:
        self._next = len(self._batches)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._bar.close()
