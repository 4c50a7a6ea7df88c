"""create_network: the empty network a saved model describes, by its kind (what timm's create_model is there).

Reading a checkpoint, an exported folder or the paper's run folder builds its network here, then loads the
saved weights into it; nothing else in attrnet decides which class a saved model is.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from attrnet.errors import AttrnetError
from attrnet.models.build import build_model
from attrnet.models.latent import LatentTaskNet

KIND_ATTRIBUTE_NET = "attribute_net"  # AttributeNet: backbone -> trunk -> heads (checkpoints/best.pt, last.pt)
KIND_LATENT_TASK = "latent_task"      # the paper's model on CNN features: LatentTaskNet (mtl_model.pt)
KINDS = (KIND_ATTRIBUTE_NET, KIND_LATENT_TASK)
FEATURE_MODES = ("shared", "per_attribute")


def create_network(kind: str, model_cfg, num_attributes: int, in_chans: int, features: str = "shared") -> nn.Module:
    """The architecture of a saved model of `kind`, with placeholder weights: its saved state dict loads into it.

    model_cfg: the run's ModelConfig (its pretrained setting is ignored: the saved model holds the trained
    weights, so nothing is downloaded). features (latent_task): one shared CNN, or one CNN per attribute."""
    model_cfg = dataclasses.replace(model_cfg, pretrained=False)
    if kind == KIND_ATTRIBUTE_NET:
        return build_model(model_cfg, num_attributes, in_chans)
    if kind != KIND_LATENT_TASK:
        raise AttrnetError(f"unknown kind of model {kind!r}; this attrnet builds {', '.join(KINDS)}")
    if features not in FEATURE_MODES:
        raise AttrnetError(f"unknown latent-task features {features!r}; valid: {', '.join(FEATURE_MODES)}")
    shared = features == "shared"
    cnns = [build_model(model_cfg, num_attributes if shared else 1, in_chans)
            for _ in range(1 if shared else num_attributes)]
    d = cnns[0].num_features
    stats = (d,) if shared else (num_attributes, d)
    return LatentTaskNet(cnns, torch.zeros(stats), torch.ones(stats), torch.zeros(d, num_attributes),
                         torch.zeros(num_attributes))
