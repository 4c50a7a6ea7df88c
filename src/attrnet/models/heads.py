"""Shared trunk and per-attribute heads on top of backbone features."""

from __future__ import annotations

import torch
import torch.nn as nn


def make_trunk(in_features: int, hidden: list[int], dropout: float) -> tuple[nn.Module, int]:
    """An MLP shared by all attributes (the seed's 4096-4096 trunk is hidden=[4096, 4096])."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    return (nn.Sequential(*layers) if layers else nn.Identity()), in_features


class AttributeHeads(nn.Module):
    """One classifier per attribute, computed for all attributes at once.

    hidden=0: M linear classifiers, stored as one [M, D] weight (a single matmul).
    hidden>0: M independent MLPs D -> hidden -> 1, stored as stacked weights and run with einsum
    instead of a Python loop over M small modules.
    """

    def __init__(self, in_features: int, num_attributes: int, hidden: int = 0):
        super().__init__()
        self.hidden = hidden
        if hidden == 0:
            self.linear = nn.Linear(in_features, num_attributes)
        else:
            self.w1 = nn.Parameter(torch.empty(num_attributes, in_features, hidden))
            self.b1 = nn.Parameter(torch.zeros(num_attributes, hidden))
            self.w2 = nn.Parameter(torch.empty(num_attributes, hidden))
            self.b2 = nn.Parameter(torch.zeros(num_attributes))
            bound1, bound2 = in_features ** -0.5, hidden ** -0.5
            nn.init.uniform_(self.w1, -bound1, bound1)
            nn.init.uniform_(self.w2, -bound2, bound2)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.hidden == 0:
            return self.linear(feats)
        h = torch.relu(torch.einsum("bd,mdh->bmh", feats, self.w1) + self.b1)
        return torch.einsum("bmh,mh->bm", h, self.w2) + self.b2
