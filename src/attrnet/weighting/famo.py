"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liu, Stone & Liu, NeurIPS 2023).

Logits xi [M], z = softmax(xi) over the present attributes; the update is the gradient of
sum_m z_m log(L_m - Lmin_m + eps) / c with c = sum_m z_m / (L_m - Lmin_m + eps) (Lmin = 0, as in the paper's
code), i.e. weights w_m = z_m / (c (L_m + eps)), which sum to 1. After the step, xi moves so that the log
losses decrease at equal rates: xi <- Adam step along J_softmax(xi)^T (log L(t) - log L(t+1)), with weight
decay gamma.

L(t+1), the losses after the step, are taken from the next batch (the same parameters, the next images)
rather than from an extra forward pass on the same batch: a step costs no more than equal weighting's.
Only attributes present in both batches move xi; the softmax is the one whose weights were used.
"""

from __future__ import annotations

import torch

from attrnet.weighting.base import Weighting, masked_softmax


class FAMO(Weighting):
    name = "famo"

    def __init__(self, num_tasks: int, *, lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8, **common):
        super().__init__(num_tasks, **common)
        self.eps = float(eps)
        self.logits = torch.zeros(self.num_tasks, device=self.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=gamma)
        self._prev_losses: torch.Tensor | None = None
        self._prev_present: torch.Tensor | None = None

    def weights(self, means, present, gram):
        if self._prev_losses is not None:
            self._update(means, present)
        self._prev_losses, self._prev_present = means.detach().clone(), present.clone()
        return self.loss_weights(self.logits.detach(), means, present, self.eps)

    @staticmethod
    def loss_weights(logits: torch.Tensor, losses: torch.Tensor, present: torch.Tensor,
                     eps: float = 1e-8) -> torch.Tensor:
        """w_m = z_m / (c (L_m + eps)), c = sum z / (L + eps): the gradient of sum z log(L + eps) / c."""
        z = masked_softmax(logits, present)
        ratio = z / (losses + eps)
        return ratio / ratio.sum().clamp_min(1e-30)

    def _update(self, losses: torch.Tensor, present: torch.Tensor) -> None:
        both = present & self._prev_present
        delta = torch.where(both, torch.log(self._prev_losses + self.eps) - torch.log(losses + self.eps), 0.0)
        with torch.enable_grad():
            z = masked_softmax(self.logits, self._prev_present)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta.to(z.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {"logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "prev_losses": self._prev_losses, "prev_present": self._prev_present}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._prev_losses, self._prev_present = state["prev_losses"], state["prev_present"]
        if self._prev_losses is not None:
            self._prev_losses = self._prev_losses.to(self.device)
            self._prev_present = self._prev_present.to(self.device)
