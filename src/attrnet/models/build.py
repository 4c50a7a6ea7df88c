"""AttributeNet: backbone -> optional shared trunk -> one head per attribute -> logits [B, M]."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from attrnet.config import TTA_MODES
from attrnet.models.backbones import create_backbone
from attrnet.models.heads import AttributeHeads, LatentTaskHead, make_trunk


TTA_SHIFT = 1 / 16   # flip_shift moves the image by this fraction of its size (train.shift's default)


class AttributeNet(nn.Module):
    """In eval mode with tta="flip" the logits are the mean of the image's and its mirror image's; with
    "flip_shift" the mean over those two and each of them moved up, down, left and right (tta_average)."""

    def __init__(self, backbone: nn.Module, trunk: nn.Module, heads: nn.Module, dropout: float = 0.0,
                 tta: str = "none"):
        super().__init__()
        self.backbone, self.trunk, self.heads = backbone, trunk, heads
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.tta = check_tta(tta)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features every attribute's classifier reads."""
        return self.trunk(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta != "none" and not self.training:
            return tta_average(lambda b: self.heads(self.features(b)), x, self.tta)
        return self.heads(self.dropout(self.features(x)))


def tta_average(scores, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The mean of scores() over the test-time views of batch x [B, C, H, W]: the image and its mirror
    image ("flip", 2 views), and also each of them moved by TTA_SHIFT of the image up, down, left and right,
    edges repeated as in the training shifts ("flip_shift", 10 views). One pass per position, over the batch
    and its mirror images together."""
    if mode == "none":
        return scores(x)
    h, w = x.shape[-2:]
    dy, dx = max(1, round(h * TTA_SHIFT)), max(1, round(w * TTA_SHIFT))
    moves = [(0, 0)] + ([(dy, 0), (-dy, 0), (0, dx), (0, -dx)] if mode == "flip_shift" else [])
    total = None
    for oy, ox in moves:
        view = shifted(x, oy, ox)
        plain, mirrored = scores(torch.cat([view, view.flip(-1)])).chunk(2)
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


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        from attrnet.errors import AttrnetError
        raise AttrnetError(f"unknown test-time augmentation {tta!r}; valid: {', '.join(TTA_MODES)}")
    return tta


def build_model(model_cfg, num_attributes: int, in_chans: int) -> AttributeNet:
    """Translate a ModelConfig into an AttributeNet."""
    backbone = create_backbone(model_cfg.backbone, model_cfg.pretrained, in_chans, model_cfg.small_input)
    trunk, width = make_trunk(backbone.num_features, list(model_cfg.trunk), model_cfg.trunk_dropout)
    if model_cfg.head == "latent":
        k = model_cfg.latent_tasks or min(num_attributes, 16)
        heads: nn.Module = LatentTaskHead(width, num_attributes, k)
    elif model_cfg.head == "independent":
        heads = AttributeHeads(width, num_attributes, model_cfg.head_hidden)
    else:
        from attrnet.errors import AttrnetError
        raise AttrnetError(f"unknown model.head {model_cfg.head!r}; valid: independent, latent")
    return AttributeNet(backbone, trunk, heads, model_cfg.dropout, model_cfg.tta)
