"""The optimizer (AdamW with parameter groups for fine-tuning), its learning-rate schedule, and the positive
weights of imbalanced attributes."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from attrnet.config import Config
from attrnet.errors import AttrnetError


def build_optimizer(params, cfg: Config, device: torch.device, matrix_ndim: int = 2) -> torch.optim.Optimizer:
    """AdamW over a module's (or a list of) trainable tensors; weight decay only on those with at least
    `matrix_ndim` dimensions, i.e. not on biases and norm parameters (3 for weights stacked over models);
    fused kernels on GPU.

    Fine-tuning (a model with a `backbone`): the backbone's tensors get lr x train.backbone_lr_scale, and with
    train.layer_decay < 1 each of its blocks (backbone_blocks) that much less than the block above it, in
    groups after the trunk's and heads' (group 0 keeps train.lr: the lr that the history logs and that the
    latent head's proximal steps use)."""
    module = params if isinstance(params, nn.Module) else None
    params = [p for p in (module.parameters() if module is not None else params) if p.requires_grad]
    parts = [(params, cfg.train.lr)]
    t = cfg.train
    if module is not None and hasattr(module, "backbone") and (t.backbone_lr_scale != 1 or t.layer_decay != 1):
        trainable = {id(p) for p in params}
        blocks = backbone_blocks(module.backbone) if t.layer_decay != 1 else [list(module.backbone.parameters())]
        blocks = [[p for p in block if id(p) in trainable] for block in blocks]
        body = {id(p) for block in blocks for p in block}
        parts = [([p for p in params if id(p) not in body], t.lr)]
        depth = len(blocks)
        parts += [(block, t.lr * t.backbone_lr_scale * t.layer_decay ** (depth - 1 - i))
                  for i, block in enumerate(blocks) if block]
    groups = []
    for tensors, lr in parts:
        groups += [{"params": [p for p in tensors if p.ndim >= matrix_ndim], "weight_decay": t.weight_decay,
                    "lr": lr},
                   {"params": [p for p in tensors if p.ndim < matrix_ndim], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW(groups, lr=t.lr, fused=device.type == "cuda")


def backbone_blocks(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters in blocks from the input up: parameters whose module paths share their
    first two names are one block (torchvision's mobilenet_v2: features.0 ... features.18; resnet: conv1,
    bn1, layer1.0 ... layer4.1; timm's EfficientNets: conv_stem, bn1, blocks.0 ... blocks.6, conv_head,
    bn2), in the order the network registers them, which is the order its forward pass uses them."""
    blocks: dict[str, list[nn.Parameter]] = {}
    for name, p in backbone.named_parameters():
        path = name.split(".")[:-1] or [name]
        blocks.setdefault(".".join(path[:2]), []).append(p)
    return list(blocks.values())


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    total = max(1, cfg.train.epochs * steps_per_epoch)
    kind = cfg.train.schedule
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    if kind != "cosine":
        raise AttrnetError(f"unknown train.schedule {kind!r}; valid: cosine, onecycle, constant")
    warmup = min(int(cfg.train.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compute_pos_weight(labels: np.ndarray) -> torch.Tensor:
    """negatives / positives per attribute on the training rows, clipped to [0.05, 50]."""
    pos = np.nansum(labels, axis=0)
    neg = np.sum(labels == 0, axis=0)
    return torch.tensor(np.clip(neg / np.maximum(pos, 1), 0.05, 50.0), dtype=torch.float32)
