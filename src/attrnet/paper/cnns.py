"""M single-attribute CNNs trained together, for the paper's per-attribute features.

The M CNNs are trained together in one batched pass (``BatchedCNNs``): their weights are stacked with
``torch.func.stack_module_state`` and one ``torch.vmap`` over ``torch.func.functional_call`` runs all M
models on the same batch of images, each with its own weights, its own one-output head and its own loss on
its own column; one AdamW steps the stacked parameters. AdamW is element-wise, so this is exactly M
independent AdamW runs (``SequentialCNNs`` is the plain loop it is checked against).

``LoopCNNs`` is the fallback: the M models in a Python loop inside one step, one AdamW over all of them.
vmap turns the M convolutions into one grouped convolution; on the CPU that measured slower than M plain
ones (measure_batched_speedup, resnet18, batch 32, 2 shared cores: 0.88x with 8 models at 32 px, 0.59x
with 8 at 64 px, 0.16x with 36 at 32 px; the loop ran at 1.03x the sequential loop), so
``mtl.per_attribute_training: auto`` uses vmap on a GPU (not yet measured there) and the loop on the CPU.

BatchNorm: the running statistics are stacked like the weights ([M, C] buffers). In training mode each
model's BatchNorm updates its own slice in place (a batched tensor updated with a batched value, which vmap
supports), so the running statistics, and hence the eval-mode features, are exactly those of M separately
trained models. ``replace_all_batch_norm_modules_`` would also work but drops the running statistics, so
evaluation would use batch statistics and a test image's features would depend on its batch-mates.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state

from attrnet.config import Config
from attrnet.engine.optim import build_optimizer, build_scheduler
from attrnet.errors import AttrnetError
from attrnet.losses import attribute_bce, masked_bce
from attrnet.models.build import build_model


def make_attribute_models(model_cfg, num_models: int, in_chans: int, seed: int = 0) -> list[nn.Module]:
    """M AttributeNets with one output each, initialised one after the other from `seed`."""
    torch.manual_seed(seed)
    return [build_model(model_cfg, 1, in_chans) for _ in range(num_models)]


def _per_model_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None,
                   smoothing: float = 0.0) -> torch.Tensor:
    """[M] masked BCE, model m's logits [M, B] against column m of targets [B, M] (unknown labels left out):
    the per-attribute loss vector of attrnet.losses, the one every trainer uses (soft mixup targets, label
    smoothing, pos_weight). Each model has its own loss; the models share no weights, so there is nothing to
    balance: their sum gives each model exactly its own gradient."""
    return attribute_bce(logits.T, targets, pos_weight, smoothing).per_attribute()


def _optimizer(params: list[torch.Tensor], cfg: Config, device: torch.device, matrix_ndim: int = 2):
    return build_optimizer(params, cfg, device, matrix_ndim)


def _scheduler(opt, cfg: Config, epochs: int, steps_per_epoch: int):
    return build_scheduler(opt, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs)),
                           steps_per_epoch)


class BatchedCNNs:
    """M models of one architecture run as one: stacked weights, a vmap over functional_call."""

    def __init__(self, models: list[nn.Module], device: torch.device):
        if not models:
            raise AttrnetError("BatchedCNNs needs at least one model")
        params, buffers = stack_module_state(models)  # stacked where the models are, then moved once
        self.params = {k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.num_models = len(models)
        self.device = device
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None

    def setup_optimizer(self, cfg: Config, epochs: int, steps_per_epoch: int) -> None:
        """One AdamW over the stacked parameters (a stacked tensor has one more dimension than its model's)."""
        params = list(self.params.values())
        self.optimizer = _optimizer(params, cfg, self.device, matrix_ndim=3)
        self.scheduler = _scheduler(self.optimizer, cfg, epochs, steps_per_epoch)

    @staticmethod
    def _sub(d: dict, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}

    def _one(self, params: dict, buffers: dict, x: torch.Tensor, head: bool) -> torch.Tensor:
        b = self.base
        state = {**params, **buffers}
        feats = functional_call(b.backbone, self._sub(state, "backbone."), (x,))
        feats = functional_call(b.trunk, self._sub(state, "trunk."), (feats,))
        if not head:
            return feats
        return functional_call(b.heads, self._sub(state, "heads."), (feats,))

    def _run(self, x: torch.Tensor, head: bool, train: bool) -> torch.Tensor:
        self.base.train(train)
        fn = lambda p, bu, xx: self._one(p, bu, xx, head)  # noqa: E731
        return torch.vmap(fn, in_dims=(0, 0, None), randomness="different")(self.params, self.buffers, x)

    def logits(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """[M, B] logits, model m's output on every image."""
        return self._run(x, True, train)[..., 0]

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[M, B, D] penultimate features in eval mode."""
        return self._run(x, False, False)

    def step(self, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None,
             autocast=None, smoothing: float = 0.0) -> torch.Tensor:
        """One optimizer step of every model on (normalised x [B, C, H, W], labels y [B, M]); returns [M] losses."""
        if self.optimizer is None:
            raise AttrnetError("call setup_optimizer before step")
        with (autocast or _null()):
            logits = self.logits(x, train=True)
        losses = _per_model_bce(logits, y, pos_weight, smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # the sum: model m's gradient is exactly that of its own loss
        self.optimizer.step()
        self.scheduler.step()
        return losses.detach()

    def state_dicts(self) -> list[dict]:
        """Each model's state dict, unstacked (on the CPU)."""
        out = []
        for m in range(self.num_models):
            out.append({k: v[m].detach().cpu().clone() for k, v in {**self.params, **self.buffers}.items()})
        return out

    def stacked_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in {**self.params, **self.buffers}.items()}


class SequentialCNNs:
    """The plain loop the batched training is measured against: M models, M AdamW optimisers."""

    def __init__(self, models: list[nn.Module], device: torch.device):
        self.models = [m.to(device) for m in models]
        self.num_models = len(models)
        self.device = device
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list = []

    def setup_optimizer(self, cfg: Config, epochs: int, steps_per_epoch: int) -> None:
        self.optimizers, self.schedulers = [], []
        for model in self.models:
            opt = _optimizer(list(model.parameters()), cfg, self.device)
            self.optimizers.append(opt)
            self.schedulers.append(_scheduler(opt, cfg, epochs, steps_per_epoch))

    def step(self, m: int, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None,
             autocast=None, smoothing: float = 0.0) -> torch.Tensor:
        """One optimizer step of model m on its own column y[:, m]; returns its loss."""
        model = self.models[m]
        model.train()
        with (autocast or _null()):
            logits = model(x)
        loss = masked_bce(logits, y[:, m:m + 1], None if pos_weight is None else pos_weight[m:m + 1], smoothing)
        opt = self.optimizers[m]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.schedulers[m].step()
        return loss.detach()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for model in self.models:
            model.eval()
            out.append(model.features(x))
        return torch.stack(out)

    def state_dicts(self) -> list[dict]:
        return [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in self.models]


class LoopCNNs(SequentialCNNs):
    """The fallback to vmap: the M models in a Python loop inside one step, one AdamW over all their weights.

    Same arithmetic as the batched and the sequential training (AdamW is element-wise); no grouped
    convolutions, so it is the faster one where vmap's grouped convolutions are slow (on the CPU).
    """

    def setup_optimizer(self, cfg: Config, epochs: int, steps_per_epoch: int) -> None:
        opt = _optimizer([p for model in self.models for p in model.parameters()], cfg, self.device)
        self.optimizers, self.schedulers = [opt], [_scheduler(opt, cfg, epochs, steps_per_epoch)]

    def step(self, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None,  # type: ignore[override]
             autocast=None, smoothing: float = 0.0) -> torch.Tensor:
        """One optimizer step of every model, each on its own column; returns [M] losses."""
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        losses = []
        for m, model in enumerate(self.models):
            model.train()
            with (autocast or _null()):
                logits = model(x)
            loss = masked_bce(logits, y[:, m:m + 1], None if pos_weight is None else pos_weight[m:m + 1],
                              smoothing)
            loss.backward()  # frees this model's activations before the next model runs
            losses.append(loss.detach())
        opt.step()
        self.schedulers[0].step()
        return torch.stack(losses)


def _null():
    return contextlib.nullcontext()
