"""Scoring trained networks: predictions over a loader, the end of a run (thresholds tuned on validation, the
test figures, metrics.json and plots) and a checkpoint evaluated on a folder of labelled images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from attrnet import atomic, metrics
from attrnet.card import write_run_card
from attrnet.config import Config, config_from_dict
from attrnet.data.batches import BatchLoader
from attrnet.data.formats import read_table
from attrnet.device import resolve_device
from attrnet.engine import distributed as ddp
from attrnet.engine.checkpoint import save_checkpoint
from attrnet.engine.setup import PreparedData, images_for_device, make_loader, prepare_data
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import LOADED_ONLY, load_checkpoint, network_from_checkpoint, resolve_checkpoint
from attrnet.inference.forward import Normalize, batch_logits, make_normalize
from attrnet.inference.model import AttributeModel, resolve_precision
from attrnet.inference.sources import info_from_checkpoint
from attrnet.inference.tta import check_tta
from attrnet.precision import Precision
from attrnet.progress import progress_bar
from attrnet.report import plots
from attrnet.report.jsonable import to_jsonable


@torch.no_grad()
def predict_logits(model: nn.Module, loader: BatchLoader, precision: Precision,
                   dist: ddp.DistInfo = ddp.DistInfo(), progress: bool = False, tta: str = "none",
                   normalize: Normalize | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and labels for every row of the loader (all ranks' rows, in order), on its device,
    through inference's forward path (normalisation, precision, test-time augmentation)."""
    model.eval()
    normalize = normalize or make_normalize(None, loader.images.shape[1]).to(loader.device)
    logits, labels = [], []
    batches = progress_bar(loader.epoch(0), total=len(loader), desc="predicting", unit="batch", leave=False,
                   disable=not (progress and dist.is_main))
    for x, y in batches:
        logits.append(batch_logits(model, x, normalize, precision, tta))
        labels.append(y)
    z = torch.cat(logits) if logits else torch.zeros(0, loader.labels.shape[1], device=loader.device)
    t = torch.cat(labels) if labels else torch.zeros(0, loader.labels.shape[1], device=loader.device)
    return ddp.gather_rows(z, dist), ddp.gather_rows(t, dist)


def predict_probs(model: nn.Module, loader: BatchLoader, precision: Precision,
                  dist: ddp.DistInfo = ddp.DistInfo(), progress: bool = False, tta: str = "none",
                  normalize: Normalize | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and labels for every row of the loader (all ranks' rows, in order)."""
    logits, labels = predict_logits(model, loader, precision, dist, progress, tta, normalize)
    return torch.sigmoid(logits).cpu().numpy(), labels.cpu().numpy()


def model_probs(model: AttributeModel, loader: BatchLoader, dist: ddp.DistInfo = ddp.DistInfo(),
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A loaded model's probabilities and the labels for every row of the loader: its own normalisation,
    precision and test-time augmentation, as predict and serve apply them."""
    return predict_probs(model.net, loader, model.precision, dist, progress, model.tta, model.normalize)


def evaluate_checkpoint(path, data_root: str | None = None, data_format: str | None = None,
                        split: str = "test", device: str = "auto", batch_size: int = 512,
                        progress: bool = True, tta: str | None = None, by: list[str] | None = None,
                        precision: str = "auto") -> dict:
    """Metrics of a checkpoint on `split` of data_root (read in the run's format and attribute set).

    tta: none | flip | flip_shift overrides the run's test-time augmentation (None keeps it).
    by: attributes of the data (predicted or not) to split the images by: result["subgroups"] then holds every
    metric for the images whose true label of each is 1 and 0 (metrics.subgroup_metrics).
    precision: auto | bf16 | fp32, as for predict (inference.AttributeModel).
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    dev = resolve_device(device)  # a missing GPU, like an unknown tta, is reported before any image is decoded
    if tta is not None:
        check_tta(tta)
    info = info_from_checkpoint(ckpt)
    cfg: Config = config_from_dict(info.config, f"{ckpt_path} (config)")
    data_cfg = dataclasses.replace(cfg.data, root=data_root or cfg.data.root,
                                   format=data_format or cfg.data.format)
    names = info.attributes
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(data_cfg, attributes=None))
    # the attribute check reads the labels only: a wrong data set is reported before any image is decoded
    available = read_table(cfg.data, check_files=False).names
    missing = [n for n in names if n not in available]
    if missing:
        raise AttrnetError(f"{data_cfg.root} has no labels for the checkpoint's attribute(s) "
                           f"{', '.join(missing[:5])}; it was trained on a different attribute set")
    unknown_by = [b for b in by or [] if b not in available]
    if unknown_by:
        raise AttrnetError(f"--by {', '.join(unknown_by)}: {data_cfg.root} has no such attribute; "
                           f"choose from {', '.join(available)}")
    model = AttributeModel(network_from_checkpoint(ckpt), info, dev, resolve_precision(precision, dev, info), tta)
    data = prepare_data(cfg, progress=progress)
    by_labels = data.table.select(by).labels if by else None
    data.table = data.table.select(names)
    if data.groups is None and info.groups:
        data.groups = info.groups
    idx = data.indices(split)
    if len(idx) == 0:
        raise AttrnetError(f"split {split!r} of {data_cfg.root} is empty; try --split all")
    images = images_for_device(data.decoded, model.device, cfg.data.cache_on_device)
    probs, labels = model_probs(model, make_loader(images, data, idx, batch_size, model.device, False), progress=progress)
    thresholds = model.thresholds
    result = evaluation_report(probs, labels, names, thresholds, data.groups)
    result.update(split=split, checkpoint=str(ckpt_path), data=str(data_cfg.root), tta=model.tta,
                  precision=model.precision.describe(), skipped_unreadable=int(data.decoded.n_bad))
    if by:
        result["subgroups"] = metrics.subgroup_metrics(probs, labels, names, thresholds, by_labels[idx], by)
    return result


def finish(cfg: Config, run_dir: Path, data: PreparedData, images, device, precision, dist, history) -> dict:
    """Load best.pt, choose per-attribute thresholds (train.tune_thresholds: tuned on val, 0.5, or the training
    positive rates), evaluate on test through the model as inference loads it, write JSON and plots."""
    names = data.table.names
    val_idx, test_idx = data.indices("val"), data.indices("test")
    best_path = run_dir / "checkpoints" / "best.pt"
    ddp.barrier(dist)
    ckpt = load_checkpoint(best_path)
    model = AttributeModel(network_from_checkpoint(ckpt), info_from_checkpoint(ckpt), device, precision,
                           cfg.model.tta)

    def score(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loader = make_loader(images, data, idx, cfg.train.batch_size * 2, device, False, rank=dist.rank,
                             world_size=dist.world_size)
        return model_probs(model, loader, dist)

    thresholds = np.full(len(names), 0.5)
    if cfg.train.tune_thresholds == "prior":
        thresholds = metrics.prior_thresholds(data.table.labels[data.indices("train")])
    elif len(val_idx) and cfg.train.tune_thresholds:
        thresholds = metrics.tune_thresholds(*score(val_idx), cfg.train.threshold_metric)
    probs, labels = score(test_idx if len(test_idx) else val_idx)
    result = evaluation_report(probs, labels, names, thresholds, data.groups)
    result["split"] = "test" if len(test_idx) else "val"
    result["epochs"] = len(history)
    if dist.is_main:
        ckpt["thresholds"] = thresholds.tolist()
        save_checkpoint(best_path, **{k: v for k, v in ckpt.items() if k not in LOADED_ONLY})
        atomic.write_json(run_dir / "metrics.json", to_jsonable(result))
        write_run_card(ckpt, run_dir)  # MODEL_CARD.md: from the checkpoint and the metrics just written
        plots.plot_attribute_accuracy(result, run_dir / "plots" / "attribute_accuracy.png",
                                       title=f"{result['split']} split, mean accuracy {result['mean_accuracy']:.3f}")
        plots.plot_training_curves(history, run_dir / "plots" / "training_curves.png")
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
