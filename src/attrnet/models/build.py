"""AttributeNet: backbone -> optional shared trunk -> one head per attribute -> logits [B, M]."""

from __future__ import annotations

import torch
import torch.nn as nn

from attrnet.models.backbones import create_backbone
from attrnet.models.heads import AttributeHeads, LatentTaskHead, make_trunk


TTA_MODES = ("none", "flip")


class AttributeNet(nn.Module):
    """In eval mode with tta="flip" the logits are the mean of the image's and its mirror image's."""

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
        if self.tta == "flip" and not self.training:
            return flip_average(lambda b: self.heads(self.features(b)), x)
        return self.heads(self.dropout(self.features(x)))


def flip_average(scores, x: torch.Tensor) -> torch.Tensor:
    """The mean of scores(x) and scores(mirrored x), in one pass over the batch and its mirror images."""
    plain, mirrored = scores(torch.cat([x, x.flip(-1)])).chunk(2)
    return (plain + mirrored) / 2


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
