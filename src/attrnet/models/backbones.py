"""torchvision backbones by name, as feature extractors returning pooled features [B, F]."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_small", "mobilenet_v3_large",
             "efficientnet_b0", "convnext_tiny")


def create_backbone(name: str, pretrained: bool | str = False, in_chans: int = 3,
                    small_input: bool = False) -> nn.Module:
    """A torchvision classifier without its last layer; `.num_features` is the feature size.

    pretrained: False, True (torchvision's ImageNet weights, downloaded once) or a path to a state dict.
    For grey input the first convolution keeps the pretrained filters, summed over RGB.
    """
    if name not in BACKBONES:
        raise AttrnetError(f"unknown model.backbone {name!r}; valid: {', '.join(BACKBONES)}")
    weights = None
    if pretrained is True:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    model = _build(name, weights)
    if isinstance(pretrained, str) and pretrained:
        _load_local(model, Path(pretrained))
    model, num_features = _strip_classifier(name, model)
    if small_input:
        _small_stem(name, model)
    if in_chans != 3:
        _adapt_first_conv(model, in_chans)
    model.num_features = num_features
    return model


def _build(name: str, weights) -> nn.Module:
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:  # offline, or a broken download
        if weights is None:
            raise
        raise AttrnetError(f"could not load ImageNet weights for {name} ({exc}); on an offline machine pass "
                           f"model.pretrained=/path/to/{name}.pth") from None


def _load_local(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise AttrnetError(f"model.pretrained: weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AttrnetError(f"model.pretrained: {path} is not a PyTorch state dict ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(missing) > 2:  # the classifier may legitimately differ
        raise AttrnetError(f"model.pretrained: {path} does not fit this backbone "
                           f"({len(missing)} missing keys, e.g. {missing[0]})")
    log.info("loaded backbone weights from %s (%d unexpected keys ignored)", path, len(unexpected))


def _strip_classifier(name: str, model: nn.Module) -> tuple[nn.Module, int]:
    if name.startswith("resnet"):
        num = model.fc.in_features
        model.fc = nn.Identity()
    elif name.startswith(("mobilenet", "efficientnet")):
        num = next(m for m in model.classifier.modules() if isinstance(m, nn.Linear)).in_features
        model.classifier = nn.Identity()
    elif name.startswith("convnext"):
        num = model.classifier[-1].in_features
        model.classifier[-1] = nn.Identity()
    else:  # pragma: no cover
        raise AttrnetError(f"no classifier rule for backbone {name}")
    return model, num


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, child_name, child
    raise AttrnetError("backbone has no convolution")  # pragma: no cover


def _small_stem(name: str, model: nn.Module) -> None:
    """A 3x3 stride-1 first convolution and no max-pool: keeps spatial detail of 32-64 px images."""
    if not name.startswith("resnet"):
        raise AttrnetError(f"model.small_input is supported for resnets only, not {name}")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    parent, child_name, conv = _first_conv(model)
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        if in_chans == 1:  # grey = R + G + B in a pretrained filter's eyes
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) * 3 / in_chans)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, child_name, new)
