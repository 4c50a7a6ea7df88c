"""Mini-batches sliced from the decoded cache, in a seeded order that a resumed run can repeat."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np
import torch


def epoch_batches(indices: np.ndarray, batch_size: int, epoch: int, shuffle: bool, seed: int = 0,
                  drop_last: bool = False, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """The row indices of each batch of `epoch` on `rank`: a permutation seeded by (seed, epoch) when
    shuffling, cut into batches; with world_size > 1 each rank takes its slice of every global batch."""
    order = np.asarray(indices, dtype=np.int64)
    if shuffle:
        order = order[np.random.default_rng([seed, epoch]).permutation(len(order))]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if world_size > 1:
        batches = [np.array_split(b, world_size)[rank] for b in batches]
    return batches


class BatchLoader:
    """Yields (uint8 images [B, C, H, W], labels [B, M]) on `device` from rows `indices` of the cache.

    images may be a numpy array (memory-mapped cache, sliced on the host and copied over) or a tensor
    (the whole cache in GPU memory; batches are then slices there, with no copy and no host sync). While the cache is
    still being decoded, `ready` (CacheBuild.wait) is called with each batch's rows before they are read.
    With world_size > 1 every rank draws the same global order and takes its own slice of each
    global batch, so the ranks together see exactly what one process with the same global batch sees.
    """

    def __init__(self, images, labels: np.ndarray, indices: np.ndarray, batch_size: int, device: torch.device,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, prefetch: int = 2, ready=None):
        if shuffle and batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by world size {world_size}")
        self.images, self.indices = images, np.asarray(indices, dtype=np.int64)
        self.on_device = isinstance(images, torch.Tensor)  # a tensor cache (a GPU's, or a test's): sliced in place
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        if self.on_device:
            self.labels = self.labels.to(device)
        self.batch_size, self.device, self.shuffle, self.seed = batch_size, device, shuffle, seed
        self.drop_last, self.rank, self.world_size, self.prefetch = drop_last, rank, world_size, prefetch
        self.ready = ready  # while the cache is being decoded: ready(rows) waits for them, returns ok flags

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """This rank's row indices for each batch of `epoch` (deterministic in seed and epoch)."""
        return epoch_batches(self.indices, self.batch_size, epoch, self.shuffle, self.seed, self.drop_last,
                             self.rank, self.world_size)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_indices(epoch)
        if self.on_device:
            # the epoch's indices go to the device in one copy, from pinned memory and without waiting (a copy
            # from pageable memory would block the host until the GPU has finished the previous epoch's work);
            # each batch is then a slice of them
            flat = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, np.int64))
            if self.images.device.type == "cuda":
                flat = flat.pin_memory()
            flat = flat.to(self.images.device, non_blocking=True)
            start = 0
            for idx in batches:
                t = flat[start:start + len(idx)]
                start += len(idx)
                y = self.labels.index_select(0, t)
                if self.ready is not None:  # a cache decoded on the device as the epoch goes (DeviceCacheBuild)
                    y = self._unknown_where_unreadable(y, self.ready(idx))
                yield self.images.index_select(0, t), y
            return
        yield from self._host_batches(batches)

    def _unknown_where_unreadable(self, y: torch.Tensor, ok: np.ndarray) -> torch.Tensor:
        """An unreadable image's labels count as unknown (first epoch of a device-decoded cache only)."""
        if ok.all():
            return y
        bad = torch.from_numpy(~ok)
        bad = (bad.pin_memory() if y.is_cuda else bad).to(y.device, non_blocking=True)
        return torch.where(bad[:, None], torch.full_like(y, float("nan")), y)

    def _gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Sorted reads are sequential in the memory-mapped file; the order within a batch does not matter
        # for training, and evaluation uses unshuffled (already sorted) indices.
        idx = np.sort(idx)
        ok = self.ready(idx) if self.ready is not None else None
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        y = self.labels[torch.from_numpy(idx)]
        if ok is not None and not ok.all():  # an unreadable image: its labels count as unknown
            y[torch.from_numpy(~ok)] = float("nan")
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _host_batches(self, batches: list[np.ndarray]):
        """Gather batches in a background thread so reading the cache overlaps the model's work."""
        q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()

        def worker():
            try:
                for idx in batches:
                    if stop.is_set():
                        return
                    q.put(self._gather(idx))
            except BaseException as exc:  # surfaced in the consumer
                q.put(exc)
            q.put(None)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
