"""Scoring trained networks: predictions over a loader, the end of a run (thresholds tuned on validation, the
test figures, metrics.json and plots) and a checkpoint evaluated on a folder of labelled images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from attrnet import atomic, metrics, report
from attrnet.config import Config, config_from_dict
from attrnet.data.augment import normalize
from attrnet.data.batches import BatchLoader
from attrnet.data.formats import read_table
from attrnet.engine import distributed as ddp
from attrnet.engine.checkpoint import (LOADED_ONLY, load_checkpoint, model_from_checkpoint, resolve_checkpoint,
                                      save_checkpoint)
from attrnet.engine.setup import Precision, PreparedData, images_for_device, make_loader, prepare_data, resolve_device
from attrnet.errors import AttrnetError


@torch.no_grad()
def predict_logits(model: nn.Module, loader: BatchLoader, precision: Precision,
                   dist: ddp.DistInfo = ddp.DistInfo(), progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and labels for every row of the loader (all ranks' rows, in order), on its device."""
    model.eval()
    logits, labels = [], []
    batches = tqdm(loader.epoch(0), total=len(loader), desc="predicting", unit="batch", leave=False,
                   disable=not (progress and dist.is_main))
    for x, y in batches:
        x = normalize(x, channels_last=precision.channels_last)
        with precision.autocast():
            logits.append(model(x).float())
        labels.append(y)
    z = torch.cat(logits) if logits else torch.zeros(0, loader.labels.shape[1], device=loader.device)
    t = torch.cat(labels) if labels else torch.zeros(0, loader.labels.shape[1], device=loader.device)
    return ddp.gather_rows(z, dist), ddp.gather_rows(t, dist)


def predict_probs(model: nn.Module, loader: BatchLoader, precision: Precision,
                  dist: ddp.DistInfo = ddp.DistInfo(), progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and labels for every row of the loader (all ranks' rows, in order)."""
    logits, labels = predict_logits(model, loader, precision, dist, progress)
    return torch.sigmoid(logits).cpu().numpy(), labels.cpu().numpy()


def evaluate_checkpoint(path, data_root: str | None = None, data_format: str | None = None,
                        split: str = "test", device: str = "auto", batch_size: int = 512,
                        progress: bool = True, tta: str | None = None) -> dict:
    """Metrics of a checkpoint on `split` of data_root (read in the run's format and attribute set).

    tta: none | flip | flip_shift overrides the run's test-time augmentation (None keeps it).
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    dev = resolve_device(device)  # a missing GPU, like an unknown tta, is reported before any image is decoded
    model = model_from_checkpoint(ckpt, tta)
    cfg: Config = config_from_dict(ckpt["config"], f"{ckpt_path} (config)")
    data_cfg = dataclasses.replace(cfg.data, root=data_root or cfg.data.root,
                                   format=data_format or cfg.data.format)
    names = list(ckpt["attributes"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(data_cfg, attributes=None))
    # the attribute check reads the labels only: a wrong data set is reported before any image is decoded
    missing = [n for n in names if n not in read_table(cfg.data, check_files=False).names]
    if missing:
        raise AttrnetError(f"{data_cfg.root} has no labels for the checkpoint's attribute(s) "
                           f"{', '.join(missing[:5])}; it was trained on a different attribute set")
    data = prepare_data(cfg, progress=progress)
    data.table = data.table.select(names)
    if data.groups is None and ckpt.get("groups"):
        data.groups = ckpt["groups"]
    idx = data.indices(split)
    if len(idx) == 0:
        raise AttrnetError(f"split {split!r} of {data_cfg.root} is empty; try --split all")
    model = model.to(dev)
    precision = Precision(cfg, dev)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = images_for_device(data.decoded, dev, cfg.data.cache_on_device)
    probs, labels = predict_probs(model, make_loader(images, data, idx, batch_size, dev, False), precision,
                                  progress=progress)
    thresholds = np.asarray(ckpt.get("thresholds") or [0.5] * len(names))
    result = evaluation_report(probs, labels, names, thresholds, data.groups)
    result.update(split=split, checkpoint=str(ckpt_path), data=str(data_cfg.root), tta=model.tta,
                  skipped_unreadable=int(data.decoded.n_bad))
    return result


def finish(cfg: Config, run_dir: Path, data: PreparedData, images, device, precision, dist, history) -> dict:
    """Load best.pt, tune per-attribute thresholds on val, evaluate on test, write JSON and plots."""
    names = data.table.names
    val_idx, test_idx = data.indices("val"), data.indices("test")
    best_path = run_dir / "checkpoints" / "best.pt"
    ddp.barrier(dist)
    ckpt = load_checkpoint(best_path)
    model = model_from_checkpoint(ckpt).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def score(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loader = make_loader(images, data, idx, cfg.train.batch_size * 2, device, False, rank=dist.rank,
                             world_size=dist.world_size)
        return predict_probs(model, loader, precision, dist)

    thresholds = np.full(len(names), 0.5)
    if len(val_idx):
        thresholds = metrics.tune_thresholds(*score(val_idx), cfg.train.threshold_metric)
    probs, labels = score(test_idx if len(test_idx) else val_idx)
    result = evaluation_report(probs, labels, names, thresholds, data.groups)
    result["split"] = "test" if len(test_idx) else "val"
    result["epochs"] = len(history)
    if dist.is_main:
        ckpt["thresholds"] = thresholds.tolist()
        save_checkpoint(best_path, **{k: v for k, v in ckpt.items() if k not in LOADED_ONLY})
        atomic.write_json(run_dir / "metrics.json", report.to_jsonable(result))
        report.plot_attribute_accuracy(result, run_dir / "plots" / "attribute_accuracy.png",
                                       title=f"{result['split']} split, mean accuracy {result['mean_accuracy']:.3f}")
        report.plot_training_curves(history, run_dir / "plots" / "training_curves.png")
    return result


def evaluation_report(probs: np.ndarray, labels: np.ndarray, names: list[str], thresholds: np.ndarray,
                      groups=None) -> dict:
    """Metrics at the tuned thresholds, with the figures at 0.5 and the majority baseline beside them."""
    result = metrics.attribute_metrics(probs, labels, names, thresholds)
    at_half = metrics.attribute_metrics(probs, labels, names, 0.5)
    majority = metrics.majority_accuracy(labels, names)
    result["mean_accuracy_at_0.5"] = at_half["mean_accuracy"]
    result["mean_majority_accuracy"] = majority["mean_accuracy"]
    for name in names:
        result["attributes"][name]["accuracy_at_0.5"] = at_half["attributes"][name]["accuracy"]
        result["attributes"][name]["majority_accuracy"] = majority["attributes"][name]["accuracy"]
    if groups:
        result["groups"] = metrics.group_metrics(result["attributes"], groups)
    return result
