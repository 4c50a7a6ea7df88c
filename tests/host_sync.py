"""Counting what would make a GPU training step wait for the device, on any machine (CI has no GPU).

On a GPU, `torch.cuda.set_sync_debug_mode("warn")` reports synchronising calls (tests marked gpu use it). On a
CPU nothing waits, so this counts the calls that *would* wait on a GPU, by kind:

* reading a value back: `.item()`, `bool(t)`, `float(t)`, `int(t)`, indexing with a 0-dim tensor (all
  `aten._local_scalar_dense`), `.tolist()`, `.numpy()`, `.cpu()`;
* ops whose output size depends on the data (`nonzero`, `masked_select`, `unique`, boolean-mask indexing,
  `repeat_interleave` without an output size) and value checks (`equal`, `is_nonzero`);
* blocking copies: `.to(device)` / `.cuda()` / `torch.tensor(..., device=...)` without `non_blocking=True`
  (from pageable host memory, or back to the host, such a copy waits on a GPU).

Only calls made by the thread that entered the context count: a loader's background thread may read the host
cache as it likes. Each record is (kind, the innermost call site outside torch, the file where it happens).
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                  "equal", "is_nonzero", "_local_scalar_dense"}


def _site() -> tuple[str, str]:
    """(the innermost call site outside torch, the innermost torch package it went through: e.g. torch/optim
    for an optimizer's host-side step counter)."""
    plumbing = ("host_sync.py", "/torch/_compile.py", "/torch/utils/_python_dispatch.py", "/torch/_dynamo/")
    stack = [f for f in traceback.extract_stack()[:-2] if not any(p in f.filename for p in plumbing)]
    torch_frames = [f.filename.split("/torch/", 1)[1] for f in stack if "/torch/" in f.filename]
    inner = "torch/" + torch_frames[-1].rsplit("/", 1)[0] if torch_frames else ""
    for frame in reversed(stack):
        if "/torch/" not in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.line}", inner
    return "?", inner


class _Ops(TorchDispatchMode):
    def __init__(self, records: list, thread: threading.Thread):
        super().__init__()
        self.records, self.thread = records, thread

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if threading.current_thread() is self.thread:
            if name in DATA_DEPENDENT:
                self.records.append((name, *_site()))
            elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
                self.records.append((f"{name} with a boolean mask", *_site()))
            elif name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") \
                    and kwargs.get("output_size") is None:
                self.records.append((name, *_site()))
        return func(*args, **kwargs)


def _blocking_copy(args, kwargs) -> bool:
    device = kwargs.get("device")
    if device is None:
        device = next((a for a in args if isinstance(a, (torch.device, str))), None)
    return device is not None and not kwargs.get("non_blocking", False) and not (len(args) > 2 and args[2] is True)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[list[tuple[str, str, str]]]:
    """Yields the list of would-be syncs made inside the block by this thread (see the module doc)."""
    records: list[tuple[str, str, str]] = []
    thread = threading.current_thread()
    saved = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy", "cpu", "cuda", "to")}
    saved_tensor = torch.tensor

    def reading(name):
        def wrapper(self, *args, **kwargs):
            if threading.current_thread() is thread:
                records.append((f".{name}()", *_site()))
            return saved[name](self, *args, **kwargs)
        return wrapper

    def to(self, *args, **kwargs):
        if threading.current_thread() is thread and _blocking_copy(args, kwargs):
            records.append((".to(device) without non_blocking", *_site()))
        return saved["to"](self, *args, **kwargs)

    def tensor(*args, **kwargs):
        if threading.current_thread() is thread and kwargs.get("device") is not None:
            records.append(("torch.tensor(..., device=...)", *_site()))
        return saved_tensor(*args, **kwargs)

    for name in ("tolist", "numpy", "cpu", "cuda"):
        setattr(torch.Tensor, name, reading(name))
    torch.Tensor.to = to
    torch.tensor = tensor
    try:
        with _Ops(records, thread):
            yield records
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.tensor = saved_tensor
