"""The paper's trained model as one network, so that an MTL run predicts like any other.

CNN features (one shared CNN, or one CNN per attribute) -> z-score with the training rows' statistics ->
scores x^m . w_m + b_m with W = L S. The scores play the part of logits: sigmoid(score) >= threshold is the
decision, with the thresholds the pipeline stored (0.5, i.e. score >= 0, unless mtl.thresholds=tuned).
Built from a run folder by attrnet.inference; test-time augmentation is applied outside, as for any network.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def latent_weights(L: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """W = L S [D, M], multiplied in float64 (the solver's factors can be far apart in scale)."""
    return (L.double() @ S.double()).float()


class LatentTaskNet(nn.Module):
    """cnns: one AttributeNet (shared features) or M of them (per-attribute features)."""

    def __init__(self, cnns: list[nn.Module], mean: torch.Tensor, std: torch.Tensor, W: torch.Tensor,
                 b: torch.Tensor):
        super().__init__()
        self.cnns = nn.ModuleList(cnns)
        self.register_buffer("mean", mean.float())   # [D] shared, [M, D] per attribute
        self.register_buffer("std", std.float())
        self.register_buffer("W", W.float())         # [D, M]
        self.register_buffer("b", b.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.cnns) == 1:
            z = (self.cnns[0].features(x).float() - self.mean) / self.std         # [B, D]
            return z @ self.W + self.b
        f = torch.stack([cnn.features(x).float() for cnn in self.cnns])          # [M, B, D]
        z = (f - self.mean[:, None]) / self.std[:, None]
        return torch.einsum("mbd,dm->bm", z, self.W) + self.b
