"""Equal weighting (the default): the mean loss over all known labels of the batch, today's loss.

As per-attribute weights that is w_m = n_m / N (n_m: the attribute's known labels in the batch, N: all of
them): attributes weigh in proportion to their known labels, each label equally. backward() computes the
scalar exactly as losses.masked_bce does, sum of every known entry over their count, so training is
bit-identical to the loss before the per-attribute seam (summing per-attribute means times n_m / N would
round differently).
"""

from __future__ import annotations

import torch

from attrnet.losses import AttributeLosses
from attrnet.weighting.base import SharedFeatures, Weighting


class EqualWeighting(Weighting):
    name = "ew"

    def weights(self, means: torch.Tensor, present: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError("ew weighs by known counts: see count_weights")

    @staticmethod
    def count_weights(counts: torch.Tensor) -> torch.Tensor:
        """n_m / N: the weights on the per-attribute means that give the mean over all known labels."""
        return counts / counts.sum().clamp_min(1)

    def backward(self, losses: AttributeLosses, features: SharedFeatures | None = None) -> torch.Tensor:
        loss = losses.mean()
        if self.world_size > 1:
            # DDP averages gradients over ranks; scale so the result is the mean over the global batch's
            # known labels, exactly as one process would compute it.
            known = losses.known.sum().float()
            total = self.reduce(known.clone())
            loss = loss * known.clamp_min(1) * self.world_size / total.clamp_min(1)
        loss.backward()
        # For inspection only (the loss above does not use them); in one process they are exact.
        self.last_weights = None if self.world_size > 1 else self.count_weights(losses.counts)
        return loss.detach()
