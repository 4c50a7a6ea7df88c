"""Weightings computed from the loss values alone: uncertainty weighting, DWA, random loss weighting."""

from __future__ import annotations

import torch

from attrnet.weighting.base import Weighting, masked_softmax


class UncertaintyWeighting(Weighting):
    """Kendall, Gal & Cipolla, CVPR 2018: minimise sum_m [exp(-s_m) L_m + s_m] / 2 over the network and the
    log-variances s_m = log sigma_m^2 (LibMTL's form). The network's weights are w_m = exp(-s_m) / 2; s has
    its own Adam (lr), stepped with the gradient (1 - exp(-s_m) L_m) / 2 of present attributes, so
    s_m tends to log L_m."""

    name = "uw"

    def __init__(self, num_tasks: int, *, lr: float = 1e-3, **common):
        super().__init__(num_tasks, **common)
        self.log_var = torch.zeros(self.num_tasks, device=self.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.log_var], lr=lr)

    def weights(self, means, present, gram):
        return 0.5 * torch.exp(-self.log_var.detach())

    def own_objective(self, means, present):
        terms = 0.5 * (torch.exp(-self.log_var) * means + self.log_var)
        return torch.where(present, terms, 0.0).sum()

    def after_backward(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"log_var": self.log_var.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_var.copy_(state["log_var"])
        self.optimizer.load_state_dict(state["optimizer"])


class DynamicWeightAverage(Weighting):
    """Liu, Johns & Davison (MTAN), CVPR 2019: w_m = M softmax_m(r / T) with r_m = Lbar_m(t-1) / Lbar_m(t-2),
    the ratio of the attribute's mean training loss over the last two epochs (w = 1 in the first two).
    An epoch's mean is over the batches where the attribute had known labels; an attribute with none in an
    epoch gets r = 1."""

    name = "dwa"

    def __init__(self, num_tasks: int, *, temperature: float = 2.0, **common):
        super().__init__(num_tasks, **common)
        self.temperature = float(temperature)
        self._sum = torch.zeros(self.num_tasks, device=self.device, dtype=torch.float64)
        self._batches = torch.zeros(self.num_tasks, device=self.device, dtype=torch.float64)
        self.history: list[torch.Tensor] = []   # the epoch means so far (NaN: no batch with known labels)
        self._current = torch.ones(self.num_tasks, device=self.device)

    def weights(self, means, present, gram):
        self._sum += torch.where(present, means.double(), 0.0)
        self._batches += present.double()
        return self._current

    def end_epoch(self) -> None:
        mean = torch.where(self._batches > 0, self._sum / self._batches.clamp_min(1), float("nan"))
        self.history = (self.history + [mean])[-2:]
        self._sum.zero_()
        self._batches.zero_()
        self._current = self.epoch_weights(self.history, self.temperature, self.num_tasks)

    @staticmethod
    def epoch_weights(history: list[torch.Tensor], temperature: float, num_tasks: int) -> torch.Tensor:
        """The weights for the next epoch from the last two epoch means (ones before two epochs)."""
        if len(history) < 2:
            return torch.ones(num_tasks, device=history[0].device if history else "cpu")
        ratio = torch.nan_to_num(history[-1] / history[-2], nan=1.0, posinf=1.0, neginf=1.0)
        return (num_tasks * torch.softmax(ratio / temperature, dim=0)).float()

    def state_dict(self) -> dict:
        return {"sum": self._sum.clone(), "batches": self._batches.clone(), "history": list(self.history),
                "current": self._current.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._sum.copy_(state["sum"])
        self._batches.copy_(state["batches"])
        self.history = [h.to(self.device) for h in state["history"]]
        self._current = state["current"].to(self.device)


class RandomLossWeighting(Weighting):
    """Lin et al., TMLR 2022 (RLW): each step, w = softmax(e) over the present attributes with
    e ~ N(0, I), drawn from the method's own generator (the same draws on every rank)."""

    name = "rlw"

    def __init__(self, num_tasks: int, **common):
        super().__init__(num_tasks, **common)
        self.generator = self._generator()

    def weights(self, means, present, gram):
        e = torch.randn(self.num_tasks, device=self.device, generator=self.generator)
        return masked_softmax(e, present)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
