"""From a uint8 batch to logits: normalisation as in training, precision, test-time augmentation.

The one forward path of a trained network. Validation inside training, evaluate, predict, the exported ONNX
graph and the server all go through batch_logits (or, for ONNX, the same modules traced), so they give the
same numbers for the same pixels.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from attrnet.inference.tta import check_tta, tta_average
from attrnet.preprocessing import IMAGENET_NORMALIZATION


class Normalize(nn.Module):
    """uint8 (or 0-255 float) [B, C, H, W] -> (x - 255 mean) / (255 std), the arithmetic of training's
    attrnet.data.augment.normalize; grey images use the mean of the three channels' statistics."""

    def __init__(self, mean, std, channels: int):
        super().__init__()
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if channels == 1 and len(mean) == 3:
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        self.register_buffer("mean", torch.tensor(mean)[:, None, None] * 255.0)
        self.register_buffer("std", torch.tensor(std)[:, None, None] * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def make_normalize(normalization: dict | None, channels: int) -> Normalize:
    norm = normalization or IMAGENET_NORMALIZATION
    return Normalize(norm["mean"], norm["std"], channels)


@torch.no_grad()
def batch_logits(net: nn.Module, x: torch.Tensor, normalize: Normalize, precision=None,
                 tta: str = "none") -> torch.Tensor:
    """float32 logits [B, M] of a uint8 batch [B, C, H, W] on the network's device, in eval mode.

    precision: an attrnet.precision.Precision (bf16 autocast and channels_last where it says), None = fp32.
    """
    check_tta(tta)
    x = normalize(x)
    if precision is not None and precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = precision.autocast() if precision is not None else torch.autocast("cpu", enabled=False)
    with autocast:
        return tta_average(net, x, tta).float()


class ProbabilityGraph(nn.Module):
    """What an exported model computes: uint8 images [B, C, H, W] -> probabilities [B, M], normalisation and
    test-time augmentation inside, so another runtime needs nothing but the pixels."""

    def __init__(self, net: nn.Module, normalize: Normalize, tta: str = "none"):
        super().__init__()
        self.net, self.normalize, self.tta = net, normalize, check_tta(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(tta_average(self.net, self.normalize(x), self.tta).float())
