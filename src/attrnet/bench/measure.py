"""Measuring a bench case: wall time after the device's queued work, and peak memory (RSS, heap, children)."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil
import torch

MB = 2 ** 20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Wall time after the device's queued work is done (GPU kernels run asynchronously)."""
    sync(device)
    return time.perf_counter()


def _anon_rss(pid: int | str = "self") -> int:
    """Anonymous resident memory (heap, not file pages such as a memory-mapped cache), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    info = psutil.Process(None if pid == "self" else int(pid)).memory_info()
    return info.rss - getattr(info, "shared", 0)


class PeakMemory:
    """Largest resident memory of this process seen while the block runs, sampled every `interval` seconds by
    a thread: rss (all of it), anon (its heap: no file pages) and, with children=True, children_anon (the
    sum of its child processes' heaps; their RSS would count the pages they share with this one many times)."""

    def __init__(self, interval: float = 0.02, children: bool = False):
        self.interval, self.children = interval, children
        self.proc = psutil.Process()
        self.rss = self.anon = self.children_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.rss = max(self.rss, self.proc.memory_info().rss)
        self.anon = max(self.anon, _anon_rss())
        if self.children:
            total = 0
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    total += _anon_rss(child.pid)
            self.children_anon = max(self.children_anon, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
