"""fit(): train an AttributeNet from a Config into a run folder; train_one_epoch and its set-up."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from attrnet import atomic, metrics
from attrnet.config import Config
from attrnet.data.batches import BatchLoader
from attrnet.data.groups import group_index
from attrnet.device import resolve_device
from attrnet.engine import distributed as ddp
from attrnet.engine.averaging import Averages, WeightAverage, recompute_batchnorm
from attrnet.engine.batch import mixup_rng, prepare_batch
from attrnet.engine.checkpoint import RESUME_ONLY, CheckpointWriter, checkpoint_state, save_checkpoint, trained_on
from attrnet.engine.distill import distillation_targets
from attrnet.engine.evaluate import finish, predict_logits
from attrnet.engine.optim import build_optimizer, build_scheduler, compute_pos_weight
from attrnet.engine.run_folder import check_run_folder, start_run_folder
from attrnet.engine.setup import PreparedData, first_epoch_order, loader_images, make_loader, prepare_data
from attrnet.engine.warmup import BackboneFreezing
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import LOADED_ONLY, load_checkpoint, load_weights
from attrnet.inference.forward import make_normalize
from attrnet.losses import attribute_bce, masked_bce
from attrnet.models.build import build_model
from attrnet.mtl.prox import group_ids
from attrnet.precision import Precision
from attrnet.progress import progress_bar
from attrnet.weighting import Weighting, cut, make_weighting

log = logging.getLogger(__name__)


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
    bar = progress_bar(batches, total=min(len(loader), limit or len(loader)), desc=f"epoch {epoch + 1}",
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


def _val_text(row: dict) -> str:
    """The validation mean accuracy for the log, or '-' without a validation split (data.val_fraction: 0)."""
    return f"{row['val/mean_accuracy']:.4f}" if "val/mean_accuracy" in row else "-"


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
                                first_batches=first_epoch_order(cfg) if overlap else None, device=device)
    try:
        report = None
        if cfg.train.teachers and data.targets is None:
            report = distillation_targets(cfg, data, device)
        result = _fit(cfg, run_dir, data, dist, device, resume, progress, overwrite)
        if report is not None and dist.is_main:
            atomic.write_json(run_dir / "teachers.json", report)
        return result
    finally:
        if data.decoding:  # stopped during the first epoch: no half-built cache left behind
            data.decoded.abort()


def _fit(cfg: Config, run_dir: Path, data: PreparedData, dist: ddp.DistInfo, device: torch.device, resume: bool,
         progress: bool, overwrite: bool) -> dict | None:
    """The epoch loop, as torchvision's reference script has it: set up, maybe resume, then per epoch train,
    validate and write the checkpoints; at the end, the averaged weights and the test figures."""
    cfg = with_resolved_precision(cfg, Precision.from_config(cfg, device), dist)
    if dist.is_main:
        start_run_folder(run_dir, cfg, overwrite=overwrite and not resume)
    names, train_idx = data.table.names, data.indices("train")
    if len(train_idx) == 0:
        raise AttrnetError(f"{data.table.source}: the training split is empty")
    images, train_loader, val_loader = _loaders(cfg, data, device, dist)
    steps = min(len(train_loader), cfg.train.max_steps_per_epoch or len(train_loader))
    t = make_training(cfg, len(names), device, dist, steps)
    weighting = make_weighting_for(cfg, len(names), device, dist)
    averages = Averages.for_config(t.model, cfg)
    ckpt_dir, last_path = run_dir / "checkpoints", run_dir / "checkpoints" / "last.pt"
    ckpt = _resumed(last_path, t, weighting, averages, names) if resume else None
    start_epoch, history, best = (ckpt["epoch"] + 1, ckpt["history"], ckpt["best_metric"]) if ckpt else (0, [], -1.0)
    pos_weight = compute_pos_weight(data.table.labels[train_idx]).to(device) if cfg.train.pos_weight else None
    n_known = int(np.isfinite(data.table.labels[train_idx]).sum())
    after_step = chain(proximal_step_fn(t.model, cfg, data.groups, names, t.scheduler, n_known), averages.after_step)
    # validation normalises as training does: with the backbone's weights' statistics
    val_normalize = make_normalize(t.model.normalization, 1 if cfg.data.grayscale else 3).to(device)
    freezing = BackboneFreezing(t, cfg, start_epoch, device, dist)
    record = trained_on(cfg, data.table)  # what the images are: the checkpoint, its exports and card say it
    writer = CheckpointWriter()  # the next epoch trains while the disk takes this one's checkpoints
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            freezing.before(epoch)
            t0 = time.perf_counter()
            train_loss = train_one_epoch(t.step_model, train_loader, t.optimizer, t.scheduler, cfg, t.precision, epoch,
                                         pos_weight, dist, progress, after_step, weighting)
            if data.decoding:  # the first epoch overlapped the decoding: finish it, then read the cache
                data.finish_decoding()
                images, train_loader, val_loader = _loaders(cfg, data, device, dist)
            averages.end_of_epoch(epoch, cfg)
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "train/loss": round(train_loss, 6), "lr": t.scheduler.get_last_lr()[0],
                   "seconds": round(seconds, 2), "train/images_per_s": round(steps * cfg.train.batch_size / seconds, 1)}
            row.update(_validation_row(averages.eval_model, val_loader, t.precision, dist, cfg, val_normalize, names))
            history.append(row)
            score = row.get("val/mean_accuracy", -train_loss)
            if dist.is_main:
                state = checkpoint_state(t, weighting, averages, epoch, history, max(best, score), cfg, names,
                                         data.groups, record)
                # the model file: the best epoch on validation, or the latest (train.select); what resuming alone
                # needs stays in last.pt (a third the size)
                if score > best or cfg.train.select == "last":
                    writer.save(ckpt_dir / "best.pt", **{k: v for k, v in state.items() if k not in RESUME_ONLY})
                writer.save(last_path, **state)  # last: written after best, so resume never skips a best
                _write_history(run_dir, history)
                log.info("epoch %d/%d  loss %.4f  val acc %s  %.1fs  %.0f img/s", epoch + 1, cfg.train.epochs,
                         train_loss, _val_text(row), seconds, row["train/images_per_s"])
            best = max(best, score)
            ddp.barrier(dist)
    finally:
        writer.close()  # every checkpoint on disk before anything reads one, or the run stops
    if averages.swa is not None:
        _finish_averaging(averages.swa, train_loader, val_loader, val_normalize, t.precision, dist, cfg, names,
                          ckpt_dir)
    result = finish(cfg, run_dir, data, images, device, t.precision, dist, history)
    ddp.shutdown(dist)
    return result if dist.is_main else None


def _resumed(last_path: Path, t: "Training", weighting: Weighting, averages: Averages,
             names: list[str]) -> dict | None:
    """last.pt's state loaded into the model, optimizer, schedule, weighting and averages (None: nothing to
    resume)."""
    if not last_path.is_file():
        log.warning("--resume: no %s yet, starting from scratch", last_path)
        return None
    ckpt = load_checkpoint(last_path)
    check_attributes(ckpt, names, last_path)
    load_weights(t.model, ckpt["model"], str(last_path))
    try:
        t.optimizer.load_state_dict(ckpt["optimizer"])
        t.scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise AttrnetError(f"{last_path}: its optimizer state does not fit this run ({exc})") from None
    if ckpt.get("weighting"):  # the weighting's own state (none for equal weighting)
        weighting.load_state_dict(ckpt["weighting"])
    averages.load(ckpt, last_path)
    log.info("resumed from %s at epoch %d", last_path, ckpt["epoch"] + 2)
    return ckpt


def _validation_row(model: nn.Module, loader: BatchLoader, precision, dist, cfg: Config, normalize,
                    names: list[str]) -> dict:
    """Validation loss, mean accuracy and balanced accuracy at 0.5 (nothing when there is no validation split)."""
    if not len(loader.indices):
        return {}
    logits, labels = predict_logits(model, loader, precision, dist, tta=cfg.model.tta, normalize=normalize)
    m = metrics.attribute_metrics(torch.sigmoid(logits).cpu().numpy(), labels.cpu().numpy(), names)
    return {"val/loss": round(masked_bce(logits, labels).item(), 6), "val/mean_accuracy": m["mean_accuracy"],
            "val/mean_balanced_accuracy": m["mean_balanced_accuracy"]}


def _finish_averaging(swa: WeightAverage, train_loader: BatchLoader, val_loader: BatchLoader, normalize, precision,
                      dist, cfg: Config, names: list[str], ckpt_dir: Path) -> None:
    """SWA's end: BatchNorm statistics of the averaged weights from the training images (clean, as evaluation
    sees them), then the average becomes the model file (best.pt) and its validation figures are logged."""
    def clean_batches():
        for x, _ in train_loader.epoch(0):
            x = normalize(x)
            yield x.contiguous(memory_format=torch.channels_last) if precision.channels_last else x
    recompute_batchnorm(swa.module, clean_batches(), precision.autocast)
    row = _validation_row(swa.module, val_loader, precision, dist, cfg, normalize, names)
    log.info("weights averaged over the last %d epochs: val acc %s", swa.count, _val_text(row))
    if dist.is_main:
        ckpt = load_checkpoint(ckpt_dir / "best.pt")
        ckpt.update(model=swa.module.state_dict(), ema=None, swa={"epochs": swa.count, **row})
        save_checkpoint(ckpt_dir / "best.pt", **{k: v for k, v in ckpt.items() if k not in LOADED_ONLY})
    ddp.barrier(dist)


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
    precision = Precision.from_config(cfg, device)
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


def chain(*fns):
    fns = [f for f in fns if f is not None]
    if not fns:
        return None
    return lambda: [f() for f in fns]


def proximal_step_fn(model: nn.Module, cfg: Config, groups, names: list[str], scheduler, n_known: int):
    """For the latent-task head: the proximal steps of the paper's penalties after each optimizer step.

    The solver minimises a sum of per-label losses plus mu, gamma times the penalties; training minimises the
    mean over the n_known training labels, so the same objective divided by n_known has its penalties weighted
    mu / n_known, gamma / n_known: with those, mtl.mu and mtl.gamma mean the same in both."""
    if cfg.model.head != "latent":
        return None
    head = model.heads
    if groups:
        head.set_groups(group_ids(group_index(groups, names), len(names)))
    mu, gamma = cfg.mtl.mu / max(1, n_known), cfg.mtl.gamma / max(1, n_known)
    return lambda: head.proximal_step(scheduler.get_last_lr()[0], mu, gamma)


def check_attributes(ckpt: dict, names: list[str], where) -> None:
    if list(ckpt["attributes"]) != list(names):
        raise AttrnetError(f"{where}: checkpoint was trained on attributes {ckpt['attributes'][:6]}... "
                           f"({len(ckpt['attributes'])}), not this run's {len(names)} attributes")
