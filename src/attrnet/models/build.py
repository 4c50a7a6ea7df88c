"""AttributeNet: backbone -> optional shared trunk -> one head per attribute -> logits [B, M]."""

from __future__ import annotations

import torch
import torch.nn as nn

from attrnet.errors import AttrnetError
from attrnet.models.backbones import create_backbone
from attrnet.models.heads import AttributeHeads, make_trunk
from attrnet.models.latent import LatentTaskHead
from attrnet.preprocessing import IMAGENET_NORMALIZATION


class AttributeNet(nn.Module):
    """backbone -> trunk -> heads. Test-time augmentation is not part of the network: attrnet.inference
    applies it around forward() (inference.tta.tta_average).

    `normalization` ({"mean", "std", "interpolation"}, RGB) is the backbone's: what its input is normalised
    with in training and (stored in the checkpoint) in inference."""

    def __init__(self, backbone: nn.Module, trunk: nn.Module, heads: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.backbone, self.trunk, self.heads = backbone, trunk, heads
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        info = getattr(backbone, "backbone_info", None)
        self.normalization = dict(info.normalization if info is not None else IMAGENET_NORMALIZATION)
        self.backbone_frozen = False

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Fine-tuning's first epochs: the backbone gets no gradients (nothing is computed for it backwards)
        and its BatchNorm layers keep their running statistics (eval mode, kept through train()); the trunk
        and heads train as usual."""
        self.backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AttributeNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features every attribute's classifier reads."""
        return self.trunk(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.dropout(self.features(x)))


def build_model(model_cfg, num_attributes: int, in_chans: int) -> AttributeNet:
    """Translate a ModelConfig into an AttributeNet."""
    backbone = create_backbone(model_cfg.backbone, model_cfg.pretrained, in_chans, model_cfg.small_input,
                               model_cfg.drop_path)
    trunk, width = make_trunk(backbone.num_features, list(model_cfg.trunk), model_cfg.trunk_dropout)
    if model_cfg.head == "latent":
        k = model_cfg.latent_tasks or min(num_attributes, 16)
        heads: nn.Module = LatentTaskHead(width, num_attributes, k)
    elif model_cfg.head == "independent":
        heads = AttributeHeads(width, num_attributes, model_cfg.head_hidden)
    else:
        raise AttrnetError(f"unknown model.head {model_cfg.head!r}; valid: independent, latent")
    model = AttributeNet(backbone, trunk, heads, model_cfg.dropout)
    model.num_features = width  # what the heads read (LatentTaskNet's feature standardisation is this wide)
    return model
