"""The training step never waits for the device: checked on the CPU by counting what would synchronise a GPU
(tests/host_sync.py), for every loss weighting and every training option that adds work to the step, so that
CI, which has no GPU, catches the next one. An epoch may read its loss back once, at its end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from host_sync import count_host_syncs

import attrnet.engine.averaging as averaging_mod
import attrnet.engine.optim as optim_mod
import attrnet.engine.train as train_mod
from attrnet.data.batches import BatchLoader
from attrnet.models.build import build_model
from attrnet.precision import Precision
from attrnet.weighting import METHODS


def _allowed(record: tuple[str, str, str]) -> bool:
    """torch's non-fused optimizers keep their step counter as a host tensor and read it on the host (no GPU
    wait; on a GPU attrnet's AdamW is fused, with the counter on the device)."""
    kind, _site, where = record
    return kind == "_local_scalar_dense" and where == "torch/optim"


def _epoch_syncs(tmp_path, head: str = "independent", **extra) -> list:
    cfg = tiny_config(tmp_path, train__max_steps_per_epoch=0, train__log_every=10_000, model__head=head, **extra)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)  # a tensor cache, as on a GPU
    labels = np.where(np.random.default_rng(0).random((48, 5)) < 0.5, 1.0, 0.0)
    labels[::7, 2] = np.nan
    dev = torch.device("cpu")
    loader = BatchLoader(images, labels, np.arange(48), 8, dev, shuffle=True, drop_last=True)
    model = build_model(cfg.model, 5, 3)
    t = train_mod.Training(model, model, optim_mod.build_optimizer(model, cfg, dev), None, Precision.from_config(cfg, dev))
    t.scheduler = optim_mod.build_scheduler(t.optimizer, cfg, len(loader))
    weighting = train_mod.make_weighting_for(cfg, 5, dev)
    ema = averaging_mod.make_ema(model, cfg.train.ema)
    after = train_mod.chain(train_mod.proximal_step_fn(model, cfg, None, list("abcde"), t.scheduler, 40),
                            ema.update if ema is not None else None)
    pos_weight = optim_mod.compute_pos_weight(labels) if cfg.train.pos_weight else None
    run = lambda epoch: train_mod.train_one_epoch(model, loader, t.optimizer, t.scheduler, cfg, t.precision, epoch,
                                                  pos_weight, progress=False, after_step=after, weighting=weighting)
    run(0)  # first-use work (lazy state, one-off checks) happens once, outside the count
    with count_host_syncs() as records:
        run(1)
    return [r for r in records if not _allowed(r)]


@pytest.mark.parametrize("name", list(METHODS))
def test_weighted_training_steps_do_not_wait_for_the_device(tmp_path, name):
    syncs = _epoch_syncs(tmp_path, train__weighting=name)
    assert len(syncs) == 1 and syncs[0][1].startswith("train.py"), syncs  # the epoch's loss, read once at its end


@pytest.mark.parametrize("extra", [
    {"train__scale": 0.1, "train__mixup": 0.2},
    {"train__crop_scale": 0.7, "train__crop_ratio": 1.2, "train__color_jitter": 0.3, "train__cutmix": 1.0},
    {"train__mixup": 0.2, "train__cutmix": 1.0, "train__label_smoothing": 0.1, "train__pos_weight": True},
    {"train__ema": 0.99, "model__dropout": 0.2, "model__drop_path": 0.1, "train__layer_decay": 0.8},
    {"head": "latent"},
])
def test_training_options_do_not_wait_for_the_device(tmp_path, extra):
    syncs = _epoch_syncs(tmp_path, **extra)
    assert len(syncs) == 1 and syncs[0][1].startswith("train.py"), syncs


def test_the_counter_sees_what_would_wait(tmp_path, monkeypatch):
    """A loss read back every step (the classic mistake) is 6 more records in a 6-step epoch."""
    real = train_mod.attribute_bce

    def reading_bce(*args, **kwargs):
        losses = real(*args, **kwargs)
        if losses.elementwise.requires_grad:
            float(losses.mean().detach())
        return losses
    monkeypatch.setattr(train_mod, "attribute_bce", reading_bce)
    assert len(_epoch_syncs(tmp_path)) == 1 + 6
