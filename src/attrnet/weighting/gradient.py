"""Gradient methods on the shared representation: each combines the per-attribute gradients g_m of the
losses with respect to the features every head reads (over the batch), using only their Gram matrix
G = [g_m . g_k], so the combination is sum_m w_m g_m and the backbone runs one backward pass with it
(Weighting.backward). Sener & Koltun's MGDA-UB made this choice for MGDA; the others are applied the same way.
The heads themselves get the gradient of sum_m w_m L_m.
"""

from __future__ import annotations

import torch

from attrnet.weighting.base import Weighting, simplex_uniform
from attrnet.weighting.solvers import convex_min, imtl_g_weights, normalized_gram, pcgrad_coefficients

MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class GradientWeighting(Weighting):
    needs_gradients = True

    def weights(self, means, present, gram):
        return self.gram_weights(gram, present, means)

    def gram_weights(self, gram: torch.Tensor, present: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MGDA(GradientWeighting):
    """MGDA-UB (Sener & Koltun, NeurIPS 2018): w = the min-norm point of the convex hull of the (normalised)
    feature gradients, found by convex_min; the losses are then weighted by w (as in the paper's code).
    normalization: none | l2 (g / |g|) | loss (g / L) | loss+ (g / (L |g|)) before the min-norm problem."""

    name = "mgda"

    def __init__(self, num_tasks: int, *, normalization: str = "none", iters: int = 100, **common):
        super().__init__(num_tasks, **common)
        if normalization not in MGDA_NORMALIZATIONS:
            raise ValueError(f"mgda normalization must be one of {', '.join(MGDA_NORMALIZATIONS)}, "
                             f"got {normalization!r}")
        self.normalization = normalization
        self.iters = int(iters)

    def gram_weights(self, gram, present, means):
        scale = torch.ones_like(means, dtype=torch.float64)
        if self.normalization in ("l2", "loss+"):
            scale = scale * gram.diagonal().clamp_min(0).sqrt()
        if self.normalization in ("loss", "loss+"):
            scale = scale * means.double()
        scale = torch.where(present, scale.clamp_min(1e-30), 1.0)
        G = normalized_gram(gram / (scale[:, None] * scale[None, :]))
        return convex_min(G, torch.zeros_like(scale), 1.0, present, self.iters)


class PCGrad(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020) on the feature gradients: sum over tasks of each task's gradient
    projected off the ones it conflicts with (solvers.pcgrad_coefficients), each task in its own random
    order, drawn from the method's generator."""

    name = "pcgrad"

    def __init__(self, num_tasks: int, **common):
        super().__init__(num_tasks, **common)
        self.generator = self._generator()

    def gram_weights(self, gram, present, means):
        noise = torch.rand(self.num_tasks, self.num_tasks, device=gram.device, generator=self.generator)
        order = noise.argsort(dim=1)
        return pcgrad_coefficients(gram, order).sum(0)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class CAGrad(GradientWeighting):
    """CAGrad (Liu et al., NeurIPS 2021): with g0 the mean gradient and c = alpha |g0|, w minimises
    g_w . g0 + c |g_w| over the simplex (convex_min), and the update is (g0 + c / |g_w| g_w) / (1 + alpha^2)
    (the paper's code, rescale=1): weights (1/M + c w / |g_w|) / (1 + alpha^2) over the M present tasks."""

    name = "cagrad"

    def __init__(self, num_tasks: int, *, alpha: float = 0.5, iters: int = 100, **common):
        super().__init__(num_tasks, **common)
        self.alpha = float(alpha)
        self.iters = int(iters)

    def gram_weights(self, gram, present, means):
        G = normalized_gram(gram.double())
        b = simplex_uniform(present)
        c = self.alpha * (b @ G @ b + 1e-8).sqrt()
        w = convex_min(G, G @ b, c, present, self.iters)
        gw_norm = (w @ G @ w + 1e-8).sqrt()
        return (b + c / gw_norm * w) / (1 + self.alpha ** 2)


class IMTLG(GradientWeighting):
    """IMTL-G (Liu et al., ICLR 2021): the weights, summing to 1, whose combined gradient has equal
    projections on every task's unit gradient (solvers.imtl_g_weights)."""

    name = "imtl_g"

    def gram_weights(self, gram, present, means):
        return imtl_g_weights(normalized_gram(gram), present)
