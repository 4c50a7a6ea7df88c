"""Batching the images of concurrent requests into one forward pass, off the event loop.

Requests put their images on a queue and await one future per image. One worker task takes the first image
waiting, then whatever else is queued, up to max_batch, waiting at most max_wait_ms for more; it runs the
batch in a single inference thread and hands each request its rows. While a batch runs, new images queue up,
so under load batches fill without any waiting, and a request alone waits at most max_wait_ms. Nothing here
reads from a client: a slow upload holds only its own request, never the queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class _Job:
    image: torch.Tensor           # uint8 [C, H, W] at the model's size
    future: asyncio.Future


class Batcher:
    """infer: uint8 [B, C, H, W] -> float [B, M] probabilities (AttributeModel.probabilities).
    on_batch(size, seconds) is called after each batch (the server's metrics)."""

    def __init__(self, infer: Callable[[torch.Tensor], np.ndarray], max_batch: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.infer, self.max_batch, self.max_wait = infer, max_batch, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._pending: collections.deque[_Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attrnet-inference")
        self._worker = asyncio.create_task(self._run(), name="attrnet-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._executor = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def submit(self, images: list[torch.Tensor]) -> np.ndarray:
        """Probabilities [len(images), M] of uint8 images [C, H, W], in order, batched with other requests'."""
        if not self.running:
            raise RuntimeError("the batcher is not running (start() it in the application's lifespan)")
        loop = asyncio.get_running_loop()
        jobs = [_Job(img, loop.create_future()) for img in images]
        self._pending.extend(jobs)
        self._arrived.set()
        try:
            return np.stack(await asyncio.gather(*(job.future for job in jobs)))
        except asyncio.CancelledError:  # the client went away: its queued images are skipped
            for job in jobs:
                job.future.cancel()
            raise

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            jobs = [j for j in jobs if not j.future.done()]  # cancelled while queued
            if not jobs:
                continue
            batch = torch.stack([j.image for j in jobs])
            start = time.perf_counter()
            try:
                probs = await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, batch)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, the worker keeps going
                log.exception("inference failed on a batch of %d", len(jobs))
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(jobs), time.perf_counter() - start)
            for j, row in zip(jobs, probs):
                if not j.future.done():
                    j.future.set_result(row)

    async def _collect(self) -> list[_Job]:
        """The first job waiting, everything queued behind it, and what arrives within max_wait (up to max_batch).
        Jobs sit in a deque and an Event says that more came: a timed-out wait on an Event loses nothing
        (a timed-out Queue.get can lose an item on Python < 3.12)."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + self.max_wait
        while len(self._pending) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
