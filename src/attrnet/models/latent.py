"""The paper's latent-task layer (Abdulnabi et al., IEEE TMM 2015): w_m = L s^m.

LatentTaskHead: the layer at the end of a network trained end to end (model.head: latent).
LatentTaskNet: the pipeline's trained model as one network, so that an MTL run predicts like any other:

CNN features (one shared CNN, or one CNN per attribute) -> z-score with the training rows' statistics ->
scores x^m . w_m + b_m with W = L S. The scores play the part of logits: sigmoid(score) >= threshold is the
decision, with the thresholds the pipeline stored (0.5, i.e. score >= 0, unless mtl.thresholds=tuned).
Built from a run folder by attrnet.inference; test-time augmentation is applied outside, as for any network.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from attrnet.mtl.prox import block_soft_threshold, group_norms, soft_threshold


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


class LatentTaskHead(nn.Module):
    """The paper's classifier layer: w_m = L s^m, logits = x L S + b (L: D x K, S: K x M).

    Trained end to end by proximal gradient: after each optimizer step, proximal_step applies the proximal
    operators of the paper's non-smooth penalties, group soft-thresholding of S over the attribute groups and
    soft-thresholding of L (attrnet.mtl.prox, the solver's own operators). group_ids [M] says which group each
    attribute is in; by default each attribute is a group of its own (the group penalty is then l1 on S).
    """

    def __init__(self, in_features: int, num_attributes: int, latent_tasks: int,
                 group_ids: torch.Tensor | None = None):
        super().__init__()
        self.L = nn.Parameter(torch.randn(in_features, latent_tasks) * in_features ** -0.5)
        self.S = nn.Parameter(torch.randn(latent_tasks, num_attributes) * latent_tasks ** -0.5)
        self.bias = nn.Parameter(torch.zeros(num_attributes))
        # not saved: the grouping is training's business; a rebuilt model predicts without it
        self.register_buffer("group_ids", torch.arange(num_attributes), persistent=False)
        self.n_groups = num_attributes
        if group_ids is not None:
            self.set_groups(group_ids)

    def set_groups(self, group_ids: torch.Tensor) -> None:
        """The attribute groups of the penalty, as [M] ids 0..G-1 (attrnet.mtl.prox.group_ids makes them)."""
        gid = torch.as_tensor(group_ids, dtype=torch.long).reshape(-1)
        if gid.numel() != self.S.shape[1] or int(gid.min()) < 0:
            raise ValueError(f"group_ids must give each of the {self.S.shape[1]} attributes a group id >= 0")
        self.group_ids = gid.to(self.S.device)
        self.n_groups = int(gid.max()) + 1  # read once here: the per-step proximal operator never waits for a GPU

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.L @ self.S + self.bias

    def classifiers(self) -> torch.Tensor:
        """W = L S, one column per attribute."""
        return self.L @ self.S

    def penalty(self, mu: float, gamma: float, lam: float) -> torch.Tensor:
        """mu sum_k sum_g ||S[k, G_g]||_2 + gamma ||L||_1 + lam ||L||_F^2: the penalty of the solver's objective
        (attrnet.mtl.solver.objective) for the same L, S and groups."""
        return (mu * group_norms(self.S, self.group_ids, self.n_groups).sum() + gamma * self.L.abs().sum()
                + lam * (self.L * self.L).sum())

    @torch.no_grad()
    def proximal_step(self, step: float, mu: float, gamma: float) -> None:
        """x <- prox_{step g}(x) for the non-smooth part g of the penalty: S's blocks shrunk by step*mu, L's
        entries by step*gamma (lam's smooth term is left to the optimizer's weight decay)."""
        self.S.copy_(block_soft_threshold(self.S, self.group_ids, self.n_groups, step * mu))
        self.L.copy_(soft_threshold(self.L, step * gamma))
