"""fit(): train an AttributeNet from a Config into a run folder; train_one_epoch and its set-up."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from attrnet import atomic, metrics
from attrnet.config import Config
from attrnet.data.augment import augment, mixup, normalize, random_affine
from attrnet.data.batches import BatchLoader
from attrnet.engine import distributed as ddp
from attrnet.engine.checkpoint import RESUME_ONLY, load_checkpoint, load_weights, save_checkpoint
from attrnet.engine.run_folder import check_run_folder, start_run_folder
from attrnet.engine.evaluate import finish, predict_logits
from attrnet.engine.setup import (Precision, PreparedData, first_epoch_order, loader_images, make_loader,
                                  prepare_data, resolve_device)
from attrnet.errors import AttrnetError
from attrnet.losses import attribute_bce, masked_bce
from attrnet.models.backbones import IMAGENET_NORMALIZATION, weights_normalization
from attrnet.models.build import build_model
from attrnet.weighting import Weighting, cut, make_weighting

log = logging.getLogger(__name__)


def build_optimizer(params, cfg: Config, device: torch.device, matrix_ndim: int = 2) -> torch.optim.Optimizer:
    """AdamW over a module's (or a list of) trainable tensors; weight decay only on those with at least
    `matrix_ndim` dimensions, i.e. not on biases and norm parameters (3 for weights stacked over models);
    fused kernels on GPU.

    Fine-tuning (train.backbone_lr_scale != 1, a model with a `backbone`): the backbone's tensors get
    lr x backbone_lr_scale in groups of their own, after the trunk's and heads' (group 0 keeps train.lr: the
    lr that the history logs and that the latent head's proximal steps use)."""
    module = params if isinstance(params, nn.Module) else None
    params = [p for p in (module.parameters() if module is not None else params) if p.requires_grad]
    parts = [(params, cfg.train.lr)]
    if module is not None and hasattr(module, "backbone") and cfg.train.backbone_lr_scale != 1:
        body = {id(p) for p in module.backbone.parameters()}
        parts = [([p for p in params if id(p) not in body], cfg.train.lr),
                 ([p for p in params if id(p) in body], cfg.train.lr * cfg.train.backbone_lr_scale)]
    groups = []
    for tensors, lr in parts:
        groups += [{"params": [p for p in tensors if p.ndim >= matrix_ndim], "weight_decay": cfg.train.weight_decay,
                    "lr": lr},
                   {"params": [p for p in tensors if p.ndim < matrix_ndim], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=device.type == "cuda")


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    total = max(1, cfg.train.epochs * steps_per_epoch)
    kind = cfg.train.schedule
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    if kind != "cosine":
        raise AttrnetError(f"unknown train.schedule {kind!r}; valid: cosine, onecycle, constant")
    warmup = min(int(cfg.train.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compute_pos_weight(labels: np.ndarray) -> torch.Tensor:
    """negatives / positives per attribute on the training rows, clipped to [0.05, 50]."""
    pos = np.nansum(labels, axis=0)
    neg = np.sum(labels == 0, axis=0)
    return torch.tensor(np.clip(neg / np.maximum(pos, 1), 0.05, 50.0), dtype=torch.float32)


def train_one_epoch(model: nn.Module, loader: BatchLoader, optimizer, scheduler, cfg: Config,
                    precision: Precision, epoch: int, pos_weight: torch.Tensor | None = None,
                    dist: ddp.DistInfo = ddp.DistInfo(), progress: bool = True, after_step=None,
                    weighting: Weighting | None = None) -> float:
    """One pass over the training batches; returns the mean training loss over known labels (one host sync,
    at the end). The per-attribute loss vector becomes the update through `weighting` (default: the one
    cfg.train.weighting names, fresh; fit passes one that lives across epochs and checkpoints)."""
    model.train()
    if cfg.train.freeze_bn:  # running statistics stay as they are; the affine weights still learn
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    device = loader.device
    if weighting is None:
        weighting = make_weighting_for(cfg, loader.labels.shape[1], device, dist)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 100_003 + epoch)
    torch.manual_seed(cfg.train.seed * 7919 + epoch * 31 + dist.rank)  # dropout: repeatable on resume
    loss_sum = torch.zeros((), device=device)
    steps = 0
    limit = cfg.train.max_steps_per_epoch or None
    batches = loader.epoch(epoch)
    bar = tqdm(batches, total=min(len(loader), limit or len(loader)), desc=f"epoch {epoch + 1}",
               leave=False, disable=not (progress and dist.is_main), unit="batch")
    mix_rng = mixup_rng(cfg, epoch)
    # Gradient methods: the heads read a detached copy of the features (per-task gradients through the heads
    # only, then one backbone backward with their combination).
    with cut(network(model).trunk if weighting.needs_gradients else None) as features:
        for x, y in bar:
            x, y = prepare_batch(x, y, cfg, gen, mix_rng, precision.channels_last)
            with precision.autocast():
                logits = model(x)
            losses = attribute_bce(logits, y, pos_weight, cfg.train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss = weighting.backward(losses, features.pop() if features is not None else None)
            optimizer.step()
            if after_step is not None:  # before scheduler.step(): proximal steps use the lr this step used
                after_step()
            scheduler.step()
            loss_sum += loss
            steps += 1
            if progress and dist.is_main and steps % cfg.train.log_every == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}")  # host sync, only every log_every steps
            if limit and steps >= limit:
                break
    weighting.end_epoch()
    ddp.all_reduce_sum(loss_sum, dist)
    return loss_sum.item() / max(1, steps * dist.world_size)


def make_weighting_for(cfg: Config, num_attributes: int, device: torch.device,
                       dist: ddp.DistInfo = ddp.DistInfo()) -> Weighting:
    """The weighting cfg.train.weighting names, with its train.weighting_args; its global statistics are
    all-reduced over the ranks of a distributed run."""
    name = cfg.train.weighting
    return make_weighting(name, num_attributes, device=device, reduce=lambda t: ddp.all_reduce_sum(t, dist),
                          world_size=dist.world_size, seed=cfg.train.seed,
                          **(cfg.train.weighting_args or {}).get(name, {}))


def network(model: nn.Module) -> nn.Module:
    """The AttributeNet inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def mixup_rng(cfg: Config, epoch: int) -> np.random.Generator | None:
    """The host generator of an epoch's mixup weights (None without mixup)."""
    return np.random.default_rng([cfg.train.seed, epoch, 7]) if cfg.train.mixup > 0 else None


def prepare_batch(x: torch.Tensor, y: torch.Tensor, cfg: Config, gen: torch.Generator,
                  mix_rng: np.random.Generator | None, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch as every trainer sees it: augmented (train.flip/shift/scale), normalised, and blended
    with mixup (train.mixup; soft targets, unknown labels stay unknown)."""
    x = augment_batch(x, cfg, gen, channels_last and mix_rng is None)
    if mix_rng is not None:  # the weight is a host number drawn from a seeded generator: no device sync
        perm = torch.randperm(x.shape[0], device=x.device, generator=gen)
        x, y = mixup(x, y, float(mix_rng.beta(cfg.train.mixup, cfg.train.mixup)), perm)
        if channels_last:  # once, after the blend
            x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def augment_batch(x: torch.Tensor, cfg: Config, gen: torch.Generator, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch (all on the batch's device), normalised with the
    mean and std of the backbone's weights (ImageNet's for a network trained from scratch)."""
    t = cfg.train
    norm = weights_normalization(cfg.model.backbone, cfg.model.pretrained)
    mean, std = norm["mean"], norm["std"]
    if t.scale > 0:
        x = random_affine(normalize(x, mean=mean, std=std), t.flip, t.shift, t.scale, gen)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return normalize(augment(x, t.flip, t.shift, gen), channels_last=channels_last, mean=mean, std=std)


def _write_history(run_dir: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(run_dir / "metrics.csv", buf.getvalue())


def fit(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
        data: PreparedData | None = None, overwrite: bool = False) -> dict | None:
    """Train, keep the best epoch by validation mean accuracy, tune thresholds, evaluate on test.

    An existing run in run_dir is an error unless resume (continue it, with the same config but for
    run_folder.RESUMABLE keys) or overwrite (replace it). Returns the test metrics; None on ranks other than 0
    of a distributed run (so only rank 0 reports).
    """
    run_dir = Path(run_dir)
    check_run_folder(run_dir, cfg, resume, overwrite)
    device = resolve_device(cfg.train.device)
    dist = ddp.init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if data is None:  # first, so bad data fails before anything is written into the run folder
        # A single process starting afresh trains its first epoch while the cache is decoded, batch by batch
        # in that epoch's order; under torchrun one rank per node builds the cache and the others wait.
        overlap = not dist.enabled and not (resume and last_path.is_file()) and cfg.train.epochs > 0
        with ddp.local_main_first(dist):  # one cache build per node; the node's other ranks then open it
            data = prepare_data(cfg, progress=progress and dist.is_main,
                                first_batches=first_epoch_order(cfg) if overlap else None)
    try:
        return _fit(cfg, run_dir, data, dist, device, resume, progress, overwrite)
    finally:
        if data.decoding:  # stopped during the first epoch: no half-built cache left behind
            data.decoded.abort()


def _fit(cfg: Config, run_dir: Path, data: PreparedData, dist: ddp.DistInfo, device: torch.device, resume: bool,
         progress: bool, overwrite: bool) -> dict | None:
    ckpt_dir = run_dir / "checkpoints"
    cfg = with_resolved_precision(cfg, Precision(cfg, device), dist)
    if dist.is_main:
        start_run_folder(run_dir, cfg, overwrite=overwrite and not resume)
    names = data.table.names
    train_idx = data.indices("train")
    if len(train_idx) == 0:
        raise AttrnetError(f"{data.table.source}: the training split is empty")
    images, train_loader, val_loader = _loaders(cfg, data, device, dist)
    steps = min(len(train_loader), cfg.train.max_steps_per_epoch or len(train_loader))
    t = make_training(cfg, len(names), device, dist, steps)
    model, optimizer, scheduler, precision = t.model, t.optimizer, t.scheduler, t.precision
    pos_weight = compute_pos_weight(data.table.labels[train_idx]).to(device) if cfg.train.pos_weight else None
    weighting = make_weighting_for(cfg, len(names), device, dist)

    start_epoch, history, best = 0, [], -1.0
    last_path = ckpt_dir / "last.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        check_attributes(ckpt, names, last_path)
        load_weights(model, ckpt["model"], str(last_path))
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise AttrnetError(f"{last_path}: its optimizer state does not fit this run ({exc})") from None
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_metric"]
        if ckpt.get("weighting"):  # the weighting's own state (none for equal weighting)
            weighting.load_state_dict(ckpt["weighting"])
        log.info("resumed from %s at epoch %d", last_path, start_epoch + 1)
    elif resume:
        log.warning("--resume: no %s yet, starting from scratch", last_path)

    ema = make_ema(model, cfg.train.ema)
    if ema is not None and resume and last_path.is_file() and ckpt.get("ema"):
        load_weights(ema.module, ckpt["ema"], f"{last_path} (EMA)")
    after_step = chain(proximal_step_fn(model, cfg, data.groups, names, scheduler),
                       ema.update if ema is not None else None)
    eval_model = ema.module if ema is not None else model
    # validation normalises as training does: with the backbone's weights' statistics
    from attrnet.inference.forward import make_normalize
    val_normalize = make_normalize(model.normalization, 1 if cfg.data.grayscale else 3).to(device)
    freeze_epochs = cfg.train.freeze_backbone_epochs
    if freeze_epochs and dist.enabled:  # DDP's reducer expects a gradient for every tensor it was built with
        raise AttrnetError("train.freeze_backbone_epochs is not supported in a distributed (torchrun) run yet; "
                           "set it to 0 (train.backbone_lr_scale still gives the backbone a lower lr)")
    for epoch in range(start_epoch, cfg.train.epochs):
        if freeze_epochs:
            model.freeze_backbone(epoch < freeze_epochs)
        t0 = time.perf_counter()
        train_loss = train_one_epoch(t.step_model, train_loader, optimizer, scheduler, cfg, precision, epoch,
                                     pos_weight, dist, progress, after_step, weighting)
        if data.decoding:  # the first epoch overlapped the decoding: finish it, then read the cache
            data.finish_decoding()
            images, train_loader, val_loader = _loaders(cfg, data, device, dist)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train/loss": round(train_loss, 6), "lr": scheduler.get_last_lr()[0],
               "seconds": round(seconds, 2), "train/images_per_s": round(steps * cfg.train.batch_size / seconds, 1)}
        if len(val_loader.indices):
            logits, labels = predict_logits(eval_model, val_loader, precision, dist, tta=cfg.model.tta,
                                            normalize=val_normalize)
            val_loss = masked_bce(logits, labels).item()
            m = metrics.attribute_metrics(torch.sigmoid(logits).cpu().numpy(), labels.cpu().numpy(), names)
            row.update({"val/loss": round(val_loss, 6), "val/mean_accuracy": m["mean_accuracy"],
                        "val/mean_balanced_accuracy": m["mean_balanced_accuracy"]})
        history.append(row)
        score = row.get("val/mean_accuracy", -train_loss)
        if dist.is_main:
            state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), epoch=epoch, history=history,
                         best_metric=max(best, score), ema=ema.module.state_dict() if ema is not None else None,
                         weighting=weighting.state_dict(),
                         **model_meta(cfg, names, data.groups, model.normalization))
            if score > best:  # the model file: what resuming alone needs stays in last.pt (a third the size)
                save_checkpoint(ckpt_dir / "best.pt", **{k: v for k, v in state.items() if k not in RESUME_ONLY})
            save_checkpoint(last_path, **state)  # last: written after best, so resume never skips a best
            _write_history(run_dir, history)
            log.info("epoch %d/%d  loss %.4f  val acc %s  %.1fs  %.0f img/s", epoch + 1, cfg.train.epochs,
                     train_loss, f"{row.get('val/mean_accuracy', float('nan')):.4f}", seconds,
                     row["train/images_per_s"])
        best = max(best, score)
        ddp.barrier(dist)
    result = finish(cfg, run_dir, data, images, device, precision, dist, history)
    ddp.shutdown(dist)
    return result if dist.is_main else None


def with_resolved_precision(cfg: Config, precision: Precision, dist: ddp.DistInfo) -> Config:
    """The config with train.precision and train.channels_last as this machine resolved them (logged once),
    so the run's config.yaml says what it ran with."""
    if dist.is_main:
        log.info("precision: %s (%s)", precision.describe(), precision.reason or precision.name)
    train = dataclasses.replace(cfg.train, precision=precision.name, channels_last=precision.channels_last)
    return dataclasses.replace(cfg, train=train)


@dataclasses.dataclass
class Training:
    """What the training steps need. `model` is the network itself (its state dict is what checkpoints and
    the EMA hold); `step_model` is what the steps call: `model`, wrapped by DistributedDataParallel under
    torchrun and by torch.compile when train.compile is set."""

    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision


def make_training(cfg: Config, num_attributes: int, device: torch.device, dist: ddp.DistInfo,
                  steps_per_epoch: int) -> Training:
    """The seeded model in its memory format (SyncBatchNorm across GPUs), AdamW, its schedule, the wrappers."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_attributes, 1 if cfg.data.grayscale else 3).to(device)
    precision = Precision(cfg, device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    step_model = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    if cfg.train.compile:
        step_model = torch.compile(step_model)
    return Training(model, step_model, optimizer, scheduler, precision)


def _loaders(cfg: Config, data: PreparedData, device: torch.device, dist: ddp.DistInfo):
    """(what the loaders read, the training loader, the validation loader)."""
    images = loader_images(data, device, cfg.data.cache_on_device)
    train = make_loader(images, data, data.indices("train"), cfg.train.batch_size, device, True, cfg.train.seed,
                        dist.rank, dist.world_size)
    val = make_loader(images, data, data.indices("val"), cfg.train.batch_size * 2, device, False,
                      rank=dist.rank, world_size=dist.world_size)
    return images, train, val


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics: after each step
    ema <- decay * ema + (1 - decay) * current, for every floating-point entry of the state dict (integer
    entries, such as BatchNorm's batch counter, are copied). One fused lerp per step and no host sync
    (torch's AveragedModel copies its step counter to the device on every update, a blocking copy)."""

    def __init__(self, model: nn.Module, decay: float):
        import copy
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # state_dict() values alias the live parameters and buffers, which the optimizer updates in place
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._floats = ([a for a, _ in pairs if a.is_floating_point()], [b for a, b in pairs if a.is_floating_point()])
        self._others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        if self._floats[0]:
            torch._foreach_lerp_(self._floats[0], self._floats[1], 1.0 - self.decay)
        for a, b in self._others:
            a.copy_(b)


def make_ema(model: nn.Module, decay: float) -> WeightEMA | None:
    """The weight EMA asked for by train.ema (None when 0), starting from the model's current weights."""
    return WeightEMA(model, decay) if decay else None


def chain(*fns):
    fns = [f for f in fns if f is not None]
    if not fns:
        return None
    return lambda: [f() for f in fns]


def proximal_step_fn(model: nn.Module, cfg: Config, groups, names: list[str], scheduler):
    """For the latent-task head: the proximal steps of the paper's penalties after each optimizer step."""
    if cfg.model.head != "latent":
        return None
    from attrnet.mtl.prox import group_soft_threshold, soft_threshold

    head = model.heads
    group_ids = _group_ids(groups, names)

    @torch.no_grad()
    def step() -> None:
        lr = scheduler.get_last_lr()[0]
        head.S.copy_(group_soft_threshold(head.S, group_ids.to(head.S.device), lr * cfg.mtl.mu))
        head.L.copy_(soft_threshold(head.L, lr * cfg.mtl.gamma))
    return step


def _group_ids(groups, names: list[str]) -> torch.Tensor:
    if not groups:
        return torch.arange(len(names))  # every attribute its own group: plain l1/l2 per entry
    lookup = {a: gi for gi, attrs in enumerate(groups.values()) for a in attrs}
    return torch.tensor([lookup[n] for n in names])


def model_meta(cfg: Config, names: list[str], groups, normalization: dict | None = None) -> dict:
    """What a checkpoint needs besides weights to rebuild and use the model on its own. `normalization` is
    the model's ({"mean": [r, g, b], "std": [r, g, b], "interpolation"}): inference normalises with it."""
    norm = normalization or IMAGENET_NORMALIZATION
    return dict(config=cfg.to_dict(), attributes=list(names), groups=groups,
                image_size=list(cfg.image_hw()), grayscale=cfg.data.grayscale, resize=cfg.data.resize,
                normalization={"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]],
                               "interpolation": str(norm["interpolation"])})


def check_attributes(ckpt: dict, names: list[str], where) -> None:
    if list(ckpt["attributes"]) != list(names):
        raise AttrnetError(f"{where}: checkpoint was trained on attributes {ckpt['attributes'][:6]}... "
                           f"({len(ckpt['attributes'])}), not this run's {len(names)} attributes")
