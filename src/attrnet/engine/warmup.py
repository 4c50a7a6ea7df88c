"""One-off work moved off the training's path: the backward pass of a frozen backbone, prepared early.

With train.freeze_backbone_epochs, the first epochs never run the backbone's backward pass, so the first
unfrozen epoch is the first to need its kernels: on a GPU each new convolution shape, dtype and layout makes
cuDNN choose (and with cuDNN 9 often compile at run time) an execution plan for its data and weight gradients,
once per process; an H200 showed that epoch at 12.8 s against 2.3-2.6 s for the others. start_backward_warmup
runs one forward and backward pass of the whole network, on a copy, with a zero batch of the training shape,
in a background thread on a CUDA stream of its own while the frozen epochs train, so those plans are made and
cached by then. Nothing of the model changes (the copy's gradients and BatchNorm statistics are dropped).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time

import torch
import torch.nn as nn

from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)


def start_backward_warmup(model: nn.Module, batch_shape: tuple[int, ...], precision,
                          device: torch.device) -> threading.Thread:
    """Start the warm-up (see the module doc); join() the returned thread before the first unfrozen epoch."""
    twin = copy.deepcopy(model)  # taken now, before the training changes the model
    for p in twin.parameters():
        p.requires_grad_(True)
    if hasattr(twin, "freeze_backbone"):
        twin.freeze_backbone(False)
    # eval() but BatchNorm training: the training kernels, and no draw from the random generator that the
    # training's dropout and drop-path use (the run stays repeatable)
    twin.eval()
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    x = torch.zeros(batch_shape, device=device)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    copied = None
    if device.type == "cuda":  # the side stream starts after the copy and x are written
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(device))

    def run() -> None:
        t0 = time.perf_counter()
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                if copied is not None:
                    stream.wait_event(copied)
                with precision.autocast():
                    out = twin(x)
                out.float().sum().backward()
        except Exception as exc:  # only a head start: the epoch that needs these kernels makes them anyway
            log.warning("backward warm-up failed (%s: %s); the first unfrozen epoch will be slower",
                        type(exc).__name__, exc)
            return
        finally:  # nothing it queued outlives the thread (its tensors are freed when it returns)
            if stream is not None:
                stream.synchronize()
        log.info("backward pass of the unfrozen backbone prepared in %.1f s, during the frozen epochs",
                 time.perf_counter() - t0)

    thread = threading.Thread(target=run, name="attrnet-backward-warmup", daemon=True)
    thread.start()
    return thread


class BackboneFreezing:
    """train.freeze_backbone_epochs: the backbone frozen for the first epochs; on a GPU, the unfrozen backward
    pass's kernels are prepared in a background thread meanwhile (engine.warmup), so the first unfrozen epoch
    does not pay for them."""

    def __init__(self, t, cfg, start_epoch: int, device: torch.device, dist):
        self.model, self.epochs = t.model, cfg.train.freeze_backbone_epochs
        if self.epochs and dist.enabled:  # DDP's reducer expects a gradient for every tensor it was built with
            raise AttrnetError("train.freeze_backbone_epochs is not supported in a distributed (torchrun) run yet; "
                               "set it to 0 (train.backbone_lr_scale still gives the backbone a lower lr)")
        self.warmup = None
        if self.epochs > start_epoch and device.type == "cuda":
            self.warmup = start_backward_warmup(t.model, (cfg.train.batch_size, 1 if cfg.data.grayscale else 3,
                                                          *cfg.image_hw()), t.precision, device)

    def before(self, epoch: int) -> None:
        if not self.epochs:
            return
        if self.warmup is not None and epoch >= self.epochs:
            self.warmup.join()
            self.warmup = None
        self.model.freeze_backbone(epoch < self.epochs)
