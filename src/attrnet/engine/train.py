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
from attrnet.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint
from attrnet.engine.run_folder import check_run_folder, start_run_folder
from attrnet.engine.evaluate import finish, predict_logits
from attrnet.engine.setup import (Precision, PreparedData, first_epoch_order, loader_images, make_loader,
                                  prepare_data, resolve_device)
from attrnet.errors import AttrnetError
from attrnet.losses import masked_bce
from attrnet.models.build import build_model

log = logging.getLogger(__name__)


def build_optimizer(params, cfg: Config, device: torch.device, matrix_ndim: int = 2) -> torch.optim.Optimizer:
    """AdamW over a module's (or a list of) trainable tensors; weight decay only on those with at least
    `matrix_ndim` dimensions, i.e. not on biases and norm parameters (3 for weights stacked over models);
    fused kernels on GPU."""
    params = [p for p in (params.parameters() if isinstance(params, nn.Module) else params) if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= matrix_ndim], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.ndim < matrix_ndim], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=device.type == "cuda")


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    total = max(1, cfg.train.epochs * steps_per_epoch)
    kind = cfg.train.schedule
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.train.lr, total_steps=total)
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
                    dist: ddp.DistInfo = ddp.DistInfo(), progress: bool = True, after_step=None) -> float:
    """One pass over the training batches; returns the mean training loss (one host sync, at the end)."""
    model.train()
    if cfg.train.freeze_bn:  # running statistics stay as they are; the affine weights still learn
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    device = loader.device
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 100_003 + epoch)
    torch.manual_seed(cfg.train.seed * 7919 + epoch * 31 + dist.rank)  # dropout: repeatable on resume
    loss_sum = torch.zeros((), device=device)
    steps = 0
    limit = cfg.train.max_steps_per_epoch or None
    batches = loader.epoch(epoch)
    bar = tqdm(batches, total=min(len(loader), limit or len(loader)), desc=f"epoch {epoch + 1}",
               leave=False, disable=not (progress and dist.is_main), unit="batch")
    mix_rng = np.random.default_rng([cfg.train.seed, epoch, 7]) if cfg.train.mixup > 0 else None
    for x, y in bar:
        x = augment_batch(x, cfg, gen, precision.channels_last and mix_rng is None)
        if mix_rng is not None:  # the weight is a host number drawn from a seeded generator: no device sync
            perm = torch.randperm(x.shape[0], device=device, generator=gen)
            x, y = mixup(x, y, float(mix_rng.beta(cfg.train.mixup, cfg.train.mixup)), perm)
            if precision.channels_last:  # once, after the blend
                x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(x)
        loss = masked_bce(logits, y, pos_weight, cfg.train.label_smoothing)
        if dist.enabled:
            # DDP averages gradients over ranks; scale so the result is the mean over the global batch's
            # known labels, exactly as one process would compute it.
            known = (~torch.isnan(y)).sum().float()
            total = ddp.all_reduce_sum(known.clone(), dist)
            loss = loss * known.clamp_min(1) * dist.world_size / total.clamp_min(1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:  # before scheduler.step(): proximal steps use the lr this step used
            after_step()
        scheduler.step()
        loss_sum += loss.detach()
        steps += 1
        if progress and dist.is_main and steps % cfg.train.log_every == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}")  # host sync, only every log_every steps
        if limit and steps >= limit:
            break
    ddp.all_reduce_sum(loss_sum, dist)
    return loss_sum.item() / max(1, steps * dist.world_size)


def augment_batch(x: torch.Tensor, cfg: Config, gen: torch.Generator, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch (all on the batch's device)."""
    t = cfg.train
    if t.scale > 0:
        x = random_affine(normalize(x), t.flip, t.shift, t.scale, gen)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return normalize(augment(x, t.flip, t.shift, gen), channels_last=channels_last)


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
        log.info("resumed from %s at epoch %d", last_path, start_epoch + 1)
    elif resume:
        log.warning("--resume: no %s yet, starting from scratch", last_path)

    ema = make_ema(model, cfg.train.ema)
    if ema is not None and resume and last_path.is_file() and ckpt.get("ema"):
        load_weights(ema.module, ckpt["ema"], f"{last_path} (EMA)")
    after_step = chain(proximal_step_fn(model, cfg, data.groups, names, scheduler),
                       ema.update if ema is not None else None)
    eval_model = ema.module if ema is not None else model
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(t.step_model, train_loader, optimizer, scheduler, cfg, precision, epoch,
                                     pos_weight, dist, progress, after_step)
        if data.decoding:  # the first epoch overlapped the decoding: finish it, then read the cache
            data.finish_decoding()
            images, train_loader, val_loader = _loaders(cfg, data, device, dist)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train/loss": round(train_loss, 6), "lr": scheduler.get_last_lr()[0],
               "seconds": round(seconds, 2), "train/images_per_s": round(steps * cfg.train.batch_size / seconds, 1)}
        if len(val_loader.indices):
            logits, labels = predict_logits(eval_model, val_loader, precision, dist)
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
                         **model_meta(cfg, names, data.groups))
            if score > best:
                save_checkpoint(ckpt_dir / "best.pt", **state)
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


def model_meta(cfg: Config, names: list[str], groups) -> dict:
    """What a checkpoint needs besides weights to rebuild and use the model on its own."""
    return dict(config=cfg.to_dict(), attributes=list(names), groups=groups,
                image_size=list(cfg.image_hw()), grayscale=cfg.data.grayscale, resize=cfg.data.resize)


def check_attributes(ckpt: dict, names: list[str], where) -> None:
    if list(ckpt["attributes"]) != list(names):
        raise AttrnetError(f"{where}: checkpoint was trained on attributes {ckpt['attributes'][:6]}... "
                           f"({len(ckpt['attributes'])}), not this run's {len(names)} attributes")
