"""Writing checkpoints: one dict with everything needed to resume a run or rebuild its model.

Saved through attrnet.model_file (tensors, numbers, strings, lists and dicts only), so that reading one,
which attrnet.inference.checkpoint does for training, evaluation and prediction alike, never runs code.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from attrnet import model_file
from attrnet.config import Config
from attrnet.engine.averaging import Averages
from attrnet.faces.template import CELEBA_FRAME, CELEBA_TEMPLATE
from attrnet.inference.checkpoint import CHECKPOINT_VERSION
from attrnet.models.factory import KIND_ATTRIBUTE_NET
from attrnet.preprocessing import IMAGENET_NORMALIZATION, Preprocessing

# Kept in checkpoints/last.pt only: the optimizer's moments are twice the model's size and no one predicts with them.
RESUME_ONLY = ("optimizer", "scheduler", "weighting", "swa_weights", "swa_count")


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Write atomically (temp file, then rename): a run killed mid-write leaves the old file intact."""
    state.setdefault("kind", KIND_ATTRIBUTE_NET)
    model_file.save_file(path, {**state, "version": CHECKPOINT_VERSION})


class CheckpointWriter:
    """Writes checkpoints one at a time, in order, in a background thread, so an epoch does not wait for the
    disk (on a GPU an epoch of a small data set takes seconds, the write and fsync of last.pt a good part of
    one). What a checkpoint holds is copied to host memory first, the only part the caller waits for; a failed
    write is raised by the next save() or by close(), which waits for every write (before anything reads them)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attrnet-checkpoint")
        self._pending: list[Future] = []

    def save(self, path: str | Path, **state: Any) -> None:
        self._raise_failures()
        self._pending.append(self._pool.submit(save_checkpoint, path, **_on_host(state)))

    def close(self) -> None:
        """Wait for every write; raise the first failure."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()

    def _raise_failures(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()


def _on_host(obj: Any) -> Any:
    """A copy of obj whose tensors live in host memory and no longer alias the training's (which the next
    steps change in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = type(obj)((k, _on_host(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state dict's per-module versions
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_host(v) for v in obj)
    return obj


def trained_on(cfg: Config, table) -> dict:
    """What a run's images are: {"dataset": kind, "description", "made_by", "input": image | aligned_face, and for
    aligned faces "face_frame", "face_template"}: the folder's provenance (attrnet.data.provenance) when attrnet
    made it, else what its format is (CelebA's aligned set is aligned faces)."""
    prov = dict((table.extra or {}).get("provenance") or {})
    record = {"dataset": prov.get("dataset", cfg.data.format), "description": prov.get("description"),
              "made_by": prov.get("made_by"), "input": prov.get("input"),
              "face_frame": prov.get("face_frame"), "face_template": prov.get("face_template")}
    if record["input"] is None and cfg.data.format == "celeba":  # CelebA's aligned set: faces at its template
        record.update(input="aligned_face", face_frame=list(CELEBA_FRAME),
                      face_template=[list(p) for p in CELEBA_TEMPLATE])
    record["input"] = record["input"] or "image"
    return record


def model_meta(cfg: Config, names: list[str], groups, normalization: dict | None = None,
               data: dict | None = None) -> dict:
    """What a checkpoint needs besides weights to rebuild and use the model on its own: the config, the
    attributes and groups, what it was trained on (trained_on's record) and how it reads an image
    (attrnet.preprocessing.Preprocessing, with the network's own normalisation: {"mean", "std", "interpolation"}
    of its weights, and the input kind of its data)."""
    data = data or {}
    frame, template = data.get("face_frame"), data.get("face_template")
    pre = Preprocessing.from_config(cfg.data, cfg.model, normalization or IMAGENET_NORMALIZATION,
                                    input=data.get("input") or "image",
                                    face_frame=tuple(frame) if frame else None,
                                    face_template=tuple(map(tuple, template)) if template else None)
    return dict(config=cfg.to_dict(), attributes=list(names), groups=groups, preprocessing=pre.to_dict(),
                trained_on={k: data.get(k) for k in ("dataset", "description", "made_by")} if data else None)


def checkpoint_state(t, weighting, averages: Averages, epoch: int, history: list[dict],
                     best_metric: float, cfg: Config, names: list[str], groups, data: dict | None = None) -> dict:
    """One checkpoint: the weights, what resuming needs (optimizer, schedule, weighting, averages, history) and
    what using the model needs (model_meta), as torchvision's reference script keeps one dict."""
    return dict(model=t.model.state_dict(), optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
                epoch=epoch, history=history, best_metric=best_metric, weighting=weighting.state_dict(),
                **averages.state(), **model_meta(cfg, names, groups, t.model.normalization, data))
