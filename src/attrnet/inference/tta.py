"""Test-time augmentation as a reduction outside the network's forward(), as timm's validation does it.

The network maps a normalised batch to logits; tta_average calls it on each test-time view of the batch and
averages the logits. Training never sees it; validation, evaluate, predict, export and serving all use it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from attrnet.config_rules import TTA_MODES
from attrnet.errors import AttrnetError

TTA_SHIFT = 1 / 16   # flip_shift moves the image by this fraction of its size (train.shift's default)


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        raise AttrnetError(f"unknown test-time augmentation {tta!r}; valid: {', '.join(TTA_MODES)}")
    return tta


def tta_average(scores: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """The mean of scores() over the test-time views of batch x [B, C, H, W]: the image and its mirror
    image ("flip", 2 views), and also each of them moved by TTA_SHIFT of the image up, down, left and right,
    edges repeated as in the training shifts ("flip_shift", 10 views). One pass per position, over the batch
    and its mirror images together."""
    check_tta(mode)
    if mode == "none":
        return scores(x)
    h, w = x.shape[-2:]
    dy, dx = max(1, round(h * TTA_SHIFT)), max(1, round(w * TTA_SHIFT))
    moves = [(0, 0)] + ([(dy, 0), (-dy, 0), (0, dx), (0, -dx)] if mode == "flip_shift" else [])
    n = x.shape[0]
    total = None
    for oy, ox in moves:
        view = shifted(x, oy, ox)
        both = scores(torch.cat([view, view.flip(-1)]))
        plain, mirrored = both[:n], both[n:]  # slices, not chunk(2): an exported graph keeps its batch dynamic
        total = plain + mirrored if total is None else total + (plain + mirrored)
    return total / (2 * len(moves))


def shifted(x: torch.Tensor, oy: int, ox: int) -> torch.Tensor:
    """x moved so that out[..., i, j] = x[..., i + oy, j + ox], edge pixels repeated beyond the border."""
    if oy == 0 and ox == 0:
        return x
    h, w = x.shape[-2:]
    py, px = abs(oy), abs(ox)
    padded = F.pad(x, (px, px, py, py), mode="replicate")
    return padded[..., py + oy:py + oy + h, px + ox:px + ox + w]
