"""AttributeNet: backbone -> optional shared trunk -> one head per attribute -> logits [B, M]."""

from __future__ import annotations

import torch
import torch.nn as nn

from attrnet.models.backbones import create_backbone
from attrnet.models.heads import AttributeHeads, LatentTaskHead, make_trunk


class AttributeNet(nn.Module):
    def __init__(self, backbone: nn.Module, trunk: nn.Module, heads: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.backbone, self.trunk, self.heads = backbone, trunk, heads
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features every attribute's classifier reads."""
        return self.trunk(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.dropout(self.features(x)))


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
    return AttributeNet(backbone, trunk, heads, model_cfg.dropout)
