"""Losses that leave unknown labels (NaN) out: a per-attribute vector (what the weighting methods balance)
and the scalar mean over all known labels (today's loss, equal weighting)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttributeLosses:
    """One batch's losses, entry by entry: `elementwise` [B, M] (0 where the label is unknown, and no gradient
    there) and `known` [B, M] (True where it is known)."""

    elementwise: torch.Tensor
    known: torch.Tensor

    @property
    def sums(self) -> torch.Tensor:
        """[M] sum of each attribute's losses over its known labels in the batch."""
        return self.elementwise.sum(0)

    @property
    def counts(self) -> torch.Tensor:
        """[M] known labels of each attribute in the batch (float, exact up to 2**24)."""
        return self.known.sum(0, dtype=torch.float32)

    def per_attribute(self) -> torch.Tensor:
        """[M] mean over each attribute's known labels; 0, with no gradient, where it has none in the batch."""
        return self.sums / self.counts.clamp_min(1)

    def mean(self) -> torch.Tensor:
        """The mean over all known labels of the batch (masked_bce): per-attribute means weighted by counts."""
        return self.elementwise.sum() / self.known.sum().clamp_min(1)


def attribute_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
                  smoothing: float = 0.0) -> AttributeLosses:
    """Binary cross-entropy of logits [B, M] against targets [B, M] in [0, 1] (mixup's soft targets too),
    NaN = unknown. pos_weight [M] weighs positives; smoothing pulls the targets toward 0.5."""
    known = ~torch.isnan(targets)
    safe = torch.where(known, targets, torch.zeros_like(targets))
    if smoothing:
        safe = safe * (1 - smoothing) + 0.5 * smoothing
    loss = F.binary_cross_entropy_with_logits(logits.float(), safe, pos_weight=pos_weight, reduction="none")
    # where, not a product: an infinite logit at an unknown entry gives an infinite loss there, and inf * 0
    # would be NaN.
    return AttributeLosses(torch.where(known, loss, torch.zeros_like(loss)), known)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
               smoothing: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels only; NaN targets contribute nothing.

    smoothing pulls the targets toward 0.5 (label smoothing). No host sync: a batch with no known label
    gives 0, not NaN.
    """
    return attribute_bce(logits, targets, pos_weight, smoothing).mean()


def squared_hinge(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1/2 max(0, 1 - y s)^2 over known labels; targets 1/0 (mapped to +1/-1) or NaN."""
    known = ~torch.isnan(targets)
    y = torch.where(known, targets * 2 - 1, torch.zeros_like(targets))
    loss = 0.5 * torch.clamp(1 - y * scores.float(), min=0) ** 2
    return (loss * known).sum() / known.sum().clamp_min(1)
