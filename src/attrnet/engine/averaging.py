"""Averages of a model's weights: the exponential moving average after every step (train.ema) and the
uniform average of the last epochs' weights (stochastic weight averaging, train.swa_epochs)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from attrnet.inference.checkpoint import load_weights


def _float_pairs(target: nn.Module, source: nn.Module):
    """(target's floating-point state tensors, source's), and the (target, source) pairs of the others
    (BatchNorm's batch counter): state_dict() values alias the live parameters and buffers, which the
    optimizer updates in place, so the lists stay valid."""
    pairs = list(zip(target.state_dict().values(), source.state_dict().values()))
    floats = ([a for a, _ in pairs if a.is_floating_point()], [b for a, b in pairs if a.is_floating_point()])
    return floats, [(a, b) for a, b in pairs if not a.is_floating_point()]


def _frozen_copy(model: nn.Module) -> nn.Module:
    module = copy.deepcopy(model).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics: after each step
    ema <- decay * ema + (1 - decay) * current, for every floating-point entry of the state dict (integer
    entries, such as BatchNorm's batch counter, are copied). One fused lerp per step and no host sync
    (torch's AveragedModel copies its step counter to the device on every update, a blocking copy)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = _frozen_copy(model)
        self._floats, self._others = _float_pairs(self.module, model)

    @torch.no_grad()
    def update(self) -> None:
        if self._floats[0]:
            torch._foreach_lerp_(self._floats[0], self._floats[1], 1.0 - self.decay)
        for a, b in self._others:
            a.copy_(b)


def make_ema(model: nn.Module, decay: float) -> WeightEMA | None:
    """The weight EMA asked for by train.ema (None when 0), starting from the model's current weights."""
    return WeightEMA(model, decay) if decay else None


class WeightAverage:
    """Stochastic weight averaging (Izmailov et al. 2018): the uniform mean of the weights a model had at
    the end of chosen epochs (add), as a model of its own (`module`). BatchNorm's running statistics of the
    average are not the average of the statistics: recompute them with recompute_batchnorm before use.
    `count` and `module.state_dict()` are what resuming needs."""

    def __init__(self, model: nn.Module):
        self.module = _frozen_copy(model)
        self.count = 0
        self._source = model
        self._floats, self._others = _float_pairs(self.module, model)

    @torch.no_grad()
    def add(self) -> None:
        """Fold the source model's current weights into the mean: avg += (w - avg) / n."""
        self.count += 1
        if self._floats[0]:
            torch._foreach_lerp_(self._floats[0], self._floats[1], 1.0 / self.count)
        for a, b in self._others:
            a.copy_(b)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], autocast=None) -> int:
    """Set every BatchNorm layer's running mean and variance to their plain averages over `batches`
    (normalised images, as the model sees them in evaluation): what torch.optim.swa_utils.update_bn does,
    with the model's precision. Returns the number of batches; a model without BatchNorm is left as it is."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    was_training = model.training
    model.train()
    n = 0
    for x in batches:
        with autocast() if autocast is not None else torch.autocast(x.device.type, enabled=False):
            model(x)
        n += 1
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)
    return n


@dataclass
class Averages:
    """The weight averages a run keeps: an EMA updated after every step (train.ema) and, over the last
    train.swa_epochs epochs, SWA's mean of what validation scores. eval_model is what validation scores and
    the model file holds: the EMA's weights when there is one."""

    model: nn.Module
    ema: WeightEMA | None = None
    swa: WeightAverage | None = None

    @classmethod
    def for_config(cls, model: nn.Module, cfg) -> "Averages":
        ema = make_ema(model, cfg.train.ema)
        swa = WeightAverage(ema.module if ema is not None else model) if cfg.train.swa_epochs else None
        return cls(model, ema, swa)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def after_step(self):
        return self.ema.update if self.ema is not None else None

    def end_of_epoch(self, epoch: int, cfg) -> None:
        if self.swa is not None and epoch >= cfg.train.epochs - cfg.train.swa_epochs:
            self.swa.add()

    def state(self) -> dict:
        return {"ema": self.ema.module.state_dict() if self.ema is not None else None,
                "swa_weights": self.swa.module.state_dict() if self.swa is not None else None,
                "swa_count": self.swa.count if self.swa is not None else 0}

    def load(self, ckpt: dict, where: Path) -> None:
        """A resumed run's averages, as last.pt kept them."""
        if self.ema is not None and ckpt.get("ema"):
            load_weights(self.ema.module, ckpt["ema"], f"{where} (EMA)")
        if self.swa is not None and ckpt.get("swa_weights"):
            load_weights(self.swa.module, ckpt["swa_weights"], f"{where} (SWA)")
            self.swa.count = int(ckpt["swa_count"])
