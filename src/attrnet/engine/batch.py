"""A training batch as every trainer sees it: augmented, normalised, blended (mixup / CutMix).

All on the batch's device, from seeded generators: `gen` (a torch.Generator on the device: flips, shifts, crops,
colour, permutations) and `mix_rng` (a host numpy Generator: the blend weights and CutMix boxes, host numbers,
so no device value is ever read back). TrivialAugment / RandAugment draw from torch's global generator, which
train_one_epoch seeds per epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from attrnet.config import Config
from attrnet.data.augment import (
    augment,
    auto_augment,
    color_jitter,
    cutmix,
    cutmix_box,
    mixup,
    normalize,
    random_affine,
)
from attrnet.models.backbones import weights_normalization


def mixup_rng(cfg: Config, epoch: int) -> np.random.Generator | None:
    """The host generator of an epoch's mixup / CutMix draws (None when neither is on)."""
    t = cfg.train
    return np.random.default_rng([t.seed, epoch, 7]) if t.mixup > 0 or t.cutmix > 0 else None


def prepare_batch(x: torch.Tensor, y: torch.Tensor, cfg: Config, gen: torch.Generator,
                  mix_rng: np.random.Generator | None, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and targets -> the float batch and (maybe soft) targets one training step uses: augmented
    (train.flip/shift/scale/crop_*/color_jitter/auto_augment), normalised, and blended with mixup or CutMix
    (soft targets; unknown labels stay unknown)."""
    x = augment_batch(x, cfg, gen, channels_last and mix_rng is None)
    if mix_rng is not None:
        x, y = mix_batch(x, y, cfg, gen, mix_rng)
        if channels_last:  # once, after the blend
            x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: Config, gen: torch.Generator,
              mix_rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup or CutMix with a shuffled copy of the batch; with both on, each batch takes one of the two with
    even odds (timm's switch). The weight is drawn on the host: no device sync."""
    t = cfg.train
    perm = torch.randperm(x.shape[0], device=x.device, generator=gen)
    if t.cutmix > 0 and (t.mixup == 0 or mix_rng.random() < 0.5):
        lam = float(mix_rng.beta(t.cutmix, t.cutmix))
        return cutmix(x, y, cutmix_box(x.shape[-2], x.shape[-1], lam, mix_rng), perm)
    return mixup(x, y, float(mix_rng.beta(t.mixup, t.mixup)), perm)


def augment_batch(x: torch.Tensor, cfg: Config, gen: torch.Generator, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch (all on the batch's device), normalised with the
    mean and std of the backbone's weights (ImageNet's for a network trained from scratch)."""
    t = cfg.train
    norm = weights_normalization(cfg.model.backbone, cfg.model.pretrained)
    mean, std = norm["mean"], norm["std"]
    x = auto_augment(x, t.auto_augment)
    if t.color_jitter > 0:
        x = color_jitter(x, t.color_jitter, gen)  # float on the 0-255 scale from here
    if t.scale > 0 or t.crop_scale < 1 or t.crop_ratio > 1:
        x = random_affine(normalize(x, mean=mean, std=std), t.flip, t.shift, t.scale, gen, t.crop_scale,
                          t.crop_ratio)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return normalize(augment(x, t.flip, t.shift, gen), channels_last=channels_last, mean=mean, std=std)
