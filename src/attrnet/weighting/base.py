"""The seam between the per-attribute losses and the update: a Weighting turns one batch's loss vector into
gradients (LibMTL's AbsWeighting.backward(losses), with unknown labels and several processes in mind).

Every method sees, per step:
  * `means` [M]: each attribute's mean loss over its known labels in the (global) batch, detached;
  * `present` [M]: whether the attribute has at least one known label in the batch. An attribute without
    one contributes nothing and gets weight 0, whatever the method;
  * `gram` [M, M] (gradient methods only): inner products of the per-attribute gradients with respect to the
    shared representation (the features every head reads), over the whole batch.
and returns the weights w [M] (detached); the update is the gradient of sum_m w_m L_m. Gradient methods
(PCGrad, CAGrad, ...) combine per-task gradients into sum_m w_m g_m, so they fit the same form: their weights
are functions of the Gram matrix.

Several processes (DDP): whatever must be global is summed over ranks by the `reduce` hook given to the
constructor (the engine passes an all-reduce; the default is the identity): per-attribute known counts and
loss sums (one [2, M] all-reduce per step) and, for gradient methods, the [M, M] Gram matrix (the flattened
gradient over the global batch is the concatenation of the ranks' parts, so its Gram matrix is the sum of
theirs). Every rank then computes the same weights, and each rank back-propagates its share of
sum_m w_m L_m, times world_size because DDP averages gradients: the same update as one process on the
global batch. Random methods draw from their own generator, seeded alike on every rank.

No host syncs: nothing here calls .item() or branches on a tensor's value; the solvers run a fixed number of
iterations on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn as nn

from attrnet.losses import AttributeLosses

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class SharedFeatures:
    """The shared representation cut out of one forward pass: the heads read `leaf` (a detached copy that
    requires grad), `source` keeps the graph down to the backbone."""

    source: torch.Tensor
    leaf: torch.Tensor


class FeatureCut:
    """Holds the SharedFeatures of the latest forward pass through `module` while cut(module) is active."""

    def __init__(self) -> None:
        self.latest: SharedFeatures | None = None

    def pop(self) -> SharedFeatures:
        if self.latest is None:
            raise RuntimeError("no forward pass went through the cut module since the last pop()")
        out, self.latest = self.latest, None
        return out


@contextlib.contextmanager
def cut(module: nn.Module | None) -> Iterator[FeatureCut | None]:
    """Detach `module`'s output in every forward pass (a forward hook), so that the heads after it build a
    graph of their own: per-task gradients are then taken through the heads only, and the backbone runs one
    backward pass with their combination. None: nothing is cut (yields None)."""
    if module is None:
        yield None
        return
    holder = FeatureCut()

    def hook(_mod: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        holder.latest = SharedFeatures(out, leaf)
        return leaf

    handle = module.register_forward_hook(hook)
    try:
        yield holder
    finally:
        handle.remove()


class Weighting:
    """Base class: subclasses set `name`, maybe `needs_gradients`, and implement weights().

    Hyper-parameters are keyword arguments of the subclass's constructor, with defaults; the common ones
    (num_tasks, device, reduce, world_size, seed) are handled here.
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False   # needs the Gram matrix of per-task feature gradients

    def __init__(self, num_tasks: int, *, device: torch.device | str = "cpu", reduce: Reduce | None = None,
                 world_size: int = 1, seed: int = 0):
        self.num_tasks = int(num_tasks)
        self.device = torch.device(device)
        self.reduce = reduce or _identity
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.last_weights: torch.Tensor | None = None   # the weights of the latest step (for tests and logs)

    # ---- what a method defines
    def weights(self, means: torch.Tensor, present: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
        """[M] weights of the per-attribute losses; entries of attributes not present are ignored (set to 0)."""
        raise NotImplementedError

    def own_objective(self, means: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
        """A term whose gradient trains the method's own parameters (uncertainty weighting), or None."""
        return None

    def after_backward(self) -> None:
        """Step the method's own parameters, if any."""

    def end_epoch(self) -> None:
        """Called by the engine after each training epoch (DWA's loss history)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # ---- the step
    def backward(self, losses: AttributeLosses, features: SharedFeatures | None = None) -> torch.Tensor:
        """Back-propagate the weighted losses of one batch (this rank's share); returns the batch's mean loss
        over all known labels (detached, the same on every rank) for logging."""
        sums = losses.sums
        stats = self.reduce(torch.stack([losses.counts, sums.detach().float()]))  # one all-reduce
        counts, totals = stats[0], stats[1]
        present = counts > 0
        means = totals / counts.clamp_min(1)
        task_losses = sums / counts.clamp_min(1)   # this rank's share of each global mean, with grad
        gram = self.gram(task_losses, features) if self.needs_gradients else None
        w = torch.where(present, self.weights(means, present, gram).to(task_losses.dtype), 0.0).detach()
        self.last_weights = w
        objective = (w * task_losses).sum() * self.world_size
        own = self.own_objective(means, present)
        if own is not None:
            objective = objective + own
        objective.backward()
        if features is not None:
            features.source.backward(features.leaf.grad)  # the backbone's one backward pass
        self.after_backward()
        return totals.sum() / counts.sum().clamp_min(1)

    def gram(self, task_losses: torch.Tensor, features: SharedFeatures | None) -> torch.Tensor:
        """[M, M] Gram matrix (float64) of the per-task gradients w.r.t. the shared features, over the
        global batch: one batched backward through the heads (M one-hot cotangents), no backbone pass."""
        if features is None:
            raise RuntimeError(f"{self.name} needs the shared features: pass the cut of the forward pass")
        eye = torch.eye(self.num_tasks, device=task_losses.device, dtype=task_losses.dtype)
        (jac,) = torch.autograd.grad(task_losses, features.leaf, eye, retain_graph=True, is_grads_batched=True)
        flat = jac.reshape(self.num_tasks, -1).float()
        return self.reduce(flat @ flat.T).double()

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)


def simplex_uniform(present: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1 / (number present) on the present tasks, 0 elsewhere."""
    p = present.to(dtype)
    return p / p.sum().clamp_min(1)


def masked_softmax(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over the present entries only; 0 elsewhere (all zeros when none is present)."""
    z = torch.where(present, logits, torch.full_like(logits, float("-inf")))
    out = torch.softmax(z, dim=-1)
    return torch.nan_to_num(out, nan=0.0)
