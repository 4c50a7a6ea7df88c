"""Evaluate a trained checkpoint on a folder of labelled images."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from attrnet.config import Config, config_from_dict
from attrnet.data.formats import read_table
from attrnet.engine.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from attrnet.engine.setup import images_for_device, make_loader, prepare_data, resolve_device
from attrnet.engine.train import Precision, evaluation_report, predict_probs
from attrnet.errors import AttrnetError


def evaluate_checkpoint(path, data_root: str | None = None, data_format: str | None = None,
                        split: str = "test", device: str = "auto", batch_size: int = 512,
                        progress: bool = True, tta: str | None = None) -> dict:
    """Metrics of a checkpoint on `split` of data_root (read in the run's format and attribute set).

    tta: none | flip | flip_shift overrides the run's test-time augmentation (None keeps it).
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, tta)  # an unknown tta is reported before any image is decoded
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
    dev = resolve_device(device)
    model = model.to(dev)
    precision = Precision(cfg, dev)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = images_for_device(data.decoded, dev, cfg.data.cache_on_device)
    probs, labels = predict_probs(model, make_loader(images, data, idx, batch_size, dev, False), precision)
    thresholds = np.asarray(ckpt.get("thresholds") or [0.5] * len(names))
    result = evaluation_report(probs, labels, names, thresholds, data.groups)
    result.update(split=split, checkpoint=str(ckpt_path), data=str(data_cfg.root), tta=model.tta,
                  skipped_unreadable=int(data.decoded.n_bad))
    return result
