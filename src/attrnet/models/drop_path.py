"""Stochastic depth (model.drop_path, Huang et al. 2016) for torchvision backbones whose builders do not take
it: in training, each residual branch's output is dropped for a whole image with probability p and scaled by
1 / (1 - p) otherwise (torchvision.ops.stochastic_depth, mode "row"), p growing linearly with depth to `rate`
at the deepest block, as timm and torchvision's EfficientNet do. timm models take drop_path_rate, and
torchvision's EfficientNet, ConvNeXt, Swin, MaxViT take stochastic_depth_prob, directly."""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import mobilenetv2, mobilenetv3, resnet
from torchvision.ops import stochastic_depth


def residual_branches(model: nn.Module) -> list[nn.Module]:
    """The modules whose output is a residual branch added to a block's input, from the input up:
    MobileNetV2/V3 inverted residuals that keep their size, ResNet blocks' last BatchNorm."""
    branches = []
    for m in model.modules():
        if isinstance(m, mobilenetv2.InvertedResidual) and m.use_res_connect:
            branches.append(m.conv)
        elif isinstance(m, mobilenetv3.InvertedResidual) and m.use_res_connect:
            branches.append(m.block)
        elif isinstance(m, resnet.BasicBlock):
            branches.append(m.bn2)
        elif isinstance(m, resnet.Bottleneck):
            branches.append(m.bn3)
    return branches


def add_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth on every residual branch (forward hooks; nothing in the state dict changes).
    Returns the number of branches (0: the network has none this knows, and nothing was added)."""
    branches = residual_branches(model)
    for i, branch in enumerate(branches):
        p = rate * (i + 1) / len(branches)
        branch.register_forward_hook(lambda mod, _inp, out, p=p: stochastic_depth(out, p, "row", mod.training))
    return len(branches)
