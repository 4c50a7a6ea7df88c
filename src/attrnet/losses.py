"""Losses that leave unknown labels (NaN) out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
               smoothing: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels only; NaN targets contribute nothing.

    smoothing pulls the targets toward 0.5 (label smoothing).
    """
    known = ~torch.isnan(targets)
    safe = torch.where(known, targets, torch.zeros_like(targets))
    if smoothing:
        safe = safe * (1 - smoothing) + 0.5 * smoothing
    loss = F.binary_cross_entropy_with_logits(logits.float(), safe, pos_weight=pos_weight, reduction="none")
    # No host sync: a batch with no known label gives 0, not NaN. where, not a product: an infinite logit
    # at an unknown entry gives an infinite loss there, and inf * 0 would be NaN.
    return torch.where(known, loss, torch.zeros_like(loss)).sum() / known.sum().clamp_min(1)


def squared_hinge(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1/2 max(0, 1 - y s)^2 over known labels; targets 1/0 (mapped to +1/-1) or NaN."""
    known = ~torch.isnan(targets)
    y = torch.where(known, targets * 2 - 1, torch.zeros_like(targets))
    loss = 0.5 * torch.clamp(1 - y * scores.float(), min=0) ** 2
    return (loss * known).sum() / known.sum().clamp_min(1)
