"""The backbone contract both sources (torchvision, timm) meet, in a module that imports neither: a module whose
forward(x) gives pooled features [B, num_features], its classifier removed, with `num_features` and
`backbone_info` (a BackboneInfo). attrnet.models.backbones builds torchvision models to it, attrnet.models.
timm_backbones timm models; both use the helpers here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from attrnet.preprocessing import IMAGENET_NORMALIZATION


@dataclass
class BackboneInfo:
    """What a backbone says about its input, set as `backbone.backbone_info` (one attribute: timm models
    have submodules and parameters of many names, e.g. `weights`)."""

    normalization: dict                  # {"mean": [r, g, b], "std": [r, g, b], "interpolation": "bilinear" |
                                         # "bicubic"}: what the weights were trained with; ImageNet's
                                         # statistics, bilinear, for a network trained from scratch
    first_convs: tuple[str, ...]         # the convolutions that read the image (two for two-branch stems:
                                         # RepVGG, MobileOne, CrossViT), adapted in place for in_chans != 3
    input_size: tuple[int, int] | None = None  # (height, width) the weights were trained at; None: no weights
    weights: str = ""                    # where the weights came from ("" = random initialisation)


def backbone_info(model: nn.Module) -> BackboneInfo:
    info = getattr(model, "backbone_info", None)
    if info is None:  # pragma: no cover - every create_backbone result has one
        info = BackboneInfo(dict(IMAGENET_NORMALIZATION), first_conv_names(model))
    return info


def first_conv_names(model: nn.Module, hints=None) -> tuple[str, ...]:
    """The convolutions that read the image: those `hints` names (timm's pretrained_cfg["first_conv"], a
    name or a tuple of names), each a Conv2d or a module holding one; else the first nn.Conv2d in
    registration order; () when the network has no convolution (a linear patch embedding)."""
    hints = (hints,) if isinstance(hints, str) else tuple(hints or ())
    found = []
    for hint in hints:
        try:
            module = model.get_submodule(hint)
        except AttributeError:
            break
        inner = next((n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)
        if inner is None:
            break
        found.append(f"{hint}.{inner}" if inner else hint)
    if hints and len(found) == len(hints):
        return tuple(found)
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    return (first,) if first is not None else ()


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps (and first looks for) the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
