"""CNN features for the multi-task layer (Abdulnabi et al., TMM 2015).

Two ways to get the penultimate features x_i^m that the latent-task classifiers read:

* ``shared``: one multi-attribute CNN (the core's ``fit`` on the training split); x^m = x for every m.
* ``per_attribute``: as in the paper, M single-attribute CNNs, each trained on its own column alone
  (masked BCE on one column); x^m = the m-th CNN's features, so features are [M, N, D].

The M CNNs are trained together (attrnet.paper.cnns: one vmapped batch over stacked weights on a GPU, a
loop inside one step on the CPU).

Features are cached in the run folder (``features.pt``, written atomically) under a key of everything they
depend on, so rerunning the solver stage does not retrain the CNNs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from attrnet import model_file
from attrnet.config import Config
from attrnet.device import resolve_device
from attrnet.engine.batch import mixup_rng, prepare_batch
from attrnet.engine.optim import compute_pos_weight
from attrnet.engine.setup import PreparedData, images_for_device, make_loader
from attrnet.engine.train import fit
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import load_checkpoint, network_from_checkpoint
from attrnet.inference.forward import make_normalize
from attrnet.inference.tta import tta_average
from attrnet.models.backbones import weights_normalization
from attrnet.models.build import build_model
from attrnet.paper.cnns import BatchedCNNs, LoopCNNs, SequentialCNNs, make_attribute_models
from attrnet.precision import Precision
from attrnet.progress import progress_bar

log = logging.getLogger(__name__)

FEATURE_MODES = ("shared", "per_attribute")
CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """features: float32 [N, D] (shared) or [M, N, D] (per_attribute) for every row of the table (rows whose
    image did not decode are zero). logits: the shared CNN's own heads [N, M] (shared mode), else None."""

    mode: str
    features: np.ndarray
    checkpoint: str
    logits: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    cached: bool = False

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])


# ---------------------------------------------------------------- M single-attribute CNNs

def train_loader(cfg: Config, data: PreparedData, device: torch.device):
    images = images_for_device(data.decoded, device, cfg.data.cache_on_device)
    idx = data.indices("train")
    if len(idx) == 0:
        raise AttrnetError(f"{data.table.source}: the training split is empty")
    loader = make_loader(images, data, idx, cfg.train.batch_size, device, True, cfg.train.seed)
    steps = min(len(loader), cfg.train.max_steps_per_epoch or len(loader))
    return images, loader, steps


def epoch_batches(cfg: Config, loader, epoch: int, steps: int, channels_last: bool = False):
    """The batches of one epoch, prepared as the core's training prepares them (train.flip, shift, scale,
    mixup: engine.train.prepare_batch): the same for every model and every trainer."""
    gen = torch.Generator(device=loader.device).manual_seed(cfg.train.seed * 100_003 + epoch)
    mix_rng = mixup_rng(cfg, epoch)
    for i, (x, y) in enumerate(loader.epoch(epoch)):
        if i >= steps:
            break
        yield prepare_batch(x, y, cfg, gen, mix_rng, channels_last)


def _pos_weight(cfg: Config, data: PreparedData, cols: list[int], device) -> torch.Tensor | None:
    if not cfg.train.pos_weight:
        return None
    return compute_pos_weight(data.table.labels[data.indices("train")][:, cols]).to(device)


TRAINING_MODES = ("auto", "vmap", "loop", "sequential")


def resolve_training_mode(mode: str, device: torch.device) -> str:
    """auto: vmap on a GPU; on the CPU the loop, since vmap's grouped convolutions measured slower there."""
    if mode not in TRAINING_MODES:
        raise AttrnetError(f"unknown mtl.per_attribute_training {mode!r}; valid: {', '.join(TRAINING_MODES)}")
    if mode == "auto":
        return "vmap" if device.type == "cuda" else "loop"
    return mode


def train_attribute_cnns(cfg: Config, data: PreparedData, device: torch.device | None = None,
                         mode: str | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Train one single-attribute CNN per attribute for cfg.mtl.feature_epochs epochs.

    mode (default cfg.mtl.per_attribute_training): "vmap" trains cfg.mtl.models_per_pass models at a time
    (0 = all M) as one BatchedCNNs; "loop" runs them in a Python loop inside each step (LoopCNNs);
    "sequential" trains model 1 for all its steps, then model 2, ... All three see exactly the same batches
    and do the same arithmetic. Returns the M state dicts and {"history": [{"epoch", "loss": [M]}],
    "seconds", "images_models_per_s", ...}.
    """
    device = device or resolve_device(cfg.train.device)
    mode = resolve_training_mode(mode or cfg.mtl.per_attribute_training, device)
    names = data.table.names
    M = len(names)
    in_chans = 1 if cfg.data.grayscale else 3
    epochs = cfg.mtl.feature_epochs
    if epochs < 1:
        raise AttrnetError(f"mtl.feature_epochs must be at least 1, got {epochs}")
    _, loader, steps = train_loader(cfg, data, device)
    precision = Precision.from_config(cfg, device)
    models = make_attribute_models(cfg.model, M, in_chans, cfg.train.seed)
    chunk = cfg.mtl.models_per_pass or M
    history: list[dict] = [{"epoch": e + 1, "loss": [0.0] * M} for e in range(epochs)]
    t0 = time.perf_counter()
    states: list[dict] = []
    n_images = 0
    if mode in ("vmap", "loop"):
        for start in range(0, M, chunk):
            cols = list(range(start, min(M, start + chunk)))
            part = models[start:start + chunk]
            net: BatchedCNNs | LoopCNNs = BatchedCNNs(part, device) if mode == "vmap" else LoopCNNs(part, device)
            models[start:start + chunk] = [None] * len(part)  # type: ignore[list-item]  # held by net now
            del part
            net.setup_optimizer(cfg, epochs, steps)
            pw = _pos_weight(cfg, data, cols, device)
            for epoch in range(epochs):
                total, n = torch.zeros(len(cols), device=device), 0
                batches = epoch_batches(cfg, loader, epoch, steps)
                for x, y in progress_bar(batches, total=steps, leave=False, disable=not progress,
                                 desc=f"CNNs {cols[0] + 1}-{cols[-1] + 1}/{M} epoch {epoch + 1}"):
                    total += net.step(x, y[:, cols], pw, precision.autocast(), cfg.train.label_smoothing)
                    n += 1
                    n_images += x.shape[0] * len(cols)
                for j, m in enumerate(cols):
                    history[epoch]["loss"][m] = float(total[j]) / max(n, 1)
            states += net.state_dicts()
            del net
    else:
        net_s = SequentialCNNs(models, device)
        net_s.setup_optimizer(cfg, epochs, steps)
        pw = _pos_weight(cfg, data, list(range(M)), device)
        for m in range(M):
            for epoch in range(epochs):
                total_m, n = torch.zeros((), device=device), 0
                for x, y in epoch_batches(cfg, loader, epoch, steps):
                    total_m += net_s.step(m, x, y, pw, precision.autocast(), cfg.train.label_smoothing)
                    n += 1
                    n_images += x.shape[0]
                history[epoch]["loss"][m] = float(total_m) / max(n, 1)
        states = net_s.state_dicts()
    seconds = time.perf_counter() - t0
    info = {"training": mode, "history": history, "seconds": round(seconds, 3), "models": M, "epochs": epochs,
            "steps_per_epoch": steps, "images_models_per_s": round(n_images / max(seconds, 1e-9), 2)}
    log.info("trained %d single-attribute CNNs (%s) in %.1fs, %.1f images*models/s", M, mode, seconds,
             info["images_models_per_s"])
    return states, info


def _models_from_states(cfg: Config, states: list[dict]) -> list[nn.Module]:
    in_chans = 1 if cfg.data.grayscale else 3
    models = []
    for state in states:
        model = build_model(dataclasses.replace(cfg.model, pretrained=False), 1, in_chans)
        model.load_state_dict(state)
        models.append(model)  # on the CPU: BatchedCNNs / SequentialCNNs move them
    return models


@torch.no_grad()
def per_attribute_features(cfg: Config, data: PreparedData, states: list[dict],
                           device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """[M, N, D] float32 features of every decoded row, each model's eval-mode features (vmap'd over the
    models when cfg.mtl.per_attribute_training resolves to vmap, else a loop)."""
    device = device or resolve_device(cfg.train.device)
    M, N = len(states), len(data.table)
    images = images_for_device(data.decoded, device, cfg.data.cache_on_device)
    idx = np.flatnonzero(data.decoded.ok)
    precision = Precision.from_config(cfg, device)
    chunk = cfg.mtl.models_per_pass or M
    vmap = resolve_training_mode(cfg.mtl.per_attribute_training, device) == "vmap"
    # as training normalised them: with the statistics of the weights the CNNs started from
    normalize = make_normalize(weights_normalization(cfg.model.backbone, cfg.model.pretrained),
                               1 if cfg.data.grayscale else 3).to(device)
    out: np.ndarray | None = None
    for start in range(0, M, chunk):
        part = _models_from_states(cfg, states[start:start + chunk])
        net: BatchedCNNs | SequentialCNNs = BatchedCNNs(part, device) if vmap else SequentialCNNs(part, device)
        loader = make_loader(images, data, idx, cfg.train.batch_size * 2, device, False)
        parts = []
        for x, _ in progress_bar(loader.epoch(0), total=len(loader), leave=False, disable=not progress,
                         desc=f"features {start + 1}-{min(M, start + chunk)}/{M}"):
            with precision.autocast():
                parts.append(net.features(normalize(x)).float().cpu())
        feats = torch.cat(parts, dim=1).numpy()
        if out is None:
            out = np.zeros((M, N, feats.shape[-1]), dtype=np.float32)
        out[start:start + chunk][:, idx] = feats
        del net
    assert out is not None
    return out


# ---------------------------------------------------------------- the shared CNN

@torch.no_grad()
def shared_features(cfg: Config, model: nn.Module, data: PreparedData, device: torch.device,
                    progress: bool = True, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """([N, D] penultimate features, [N, M] the model's own logits) for every decoded row, the images normalised
    with the model's own statistics. tta: none, or the mean features over inference's test-time views (for a
    linear layer on top, whatever it is, that is the mean of its scores: the test-time augmentation exactly)."""
    precision = Precision.from_config(cfg, device)
    model = model.to(device).eval()
    normalize = make_normalize(getattr(model, "normalization", None), 1 if cfg.data.grayscale else 3).to(device)
    images = images_for_device(data.decoded, device, cfg.data.cache_on_device)
    idx = np.flatnonzero(data.decoded.ok)
    loader = make_loader(images, data, idx, cfg.train.batch_size * 2, device, False)
    feats, logits = [], []
    for x, _ in progress_bar(loader.epoch(0), total=len(loader), leave=False, disable=not progress, desc="features"):
        x = normalize(x)
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            f = tta_average(lambda v: model.features(v).float(), x, tta)
            logits.append(model.heads(f).float().cpu())
        feats.append(f.float().cpu())
    N, M = len(data.table), len(data.table.names)
    F_all = np.zeros((N, feats[0].shape[1] if feats else 0), dtype=np.float32)
    L_all = np.zeros((N, M), dtype=np.float32)
    if feats:
        F_all[idx] = torch.cat(feats).numpy()
        L_all[idx] = torch.cat(logits).numpy()
    return F_all, L_all


def train_shared_cnn(cfg: Config, data: PreparedData, cnn_dir: Path, progress: bool = True) -> tuple[nn.Module, dict]:
    """The core's multi-attribute fit on the training split; returns its best model and its test metrics."""
    result = fit(cfg, cnn_dir, progress=progress, data=data, overwrite=True)  # run_mtl guards the run folder
    return network_from_checkpoint(load_checkpoint(cnn_dir / "checkpoints" / "best.pt")), result


# ---------------------------------------------------------------- cache and entry point

def feature_cache_key(cfg: Config, data: PreparedData) -> str:
    """A digest of everything the features depend on: data, model, training and feature settings, split."""
    d = cfg.to_dict()
    mtl = d["mtl"]
    relevant = {"data": d["data"], "model": d["model"],
                "train": {k: v for k, v in d["train"].items() if k not in ("log_every", "device")},
                "mtl": {k: mtl.get(k) for k in ("features", "feature_epochs", "models_per_pass")},
                "names": list(data.table.names), "version": CACHE_VERSION}
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(data.partition).tobytes())
    h.update(np.ascontiguousarray(data.decoded.ok).tobytes())
    return h.hexdigest()[:24]


def compute_features(cfg: Config, data: PreparedData, run_dir: str | Path, device: torch.device | None = None,
                     progress: bool = True, reuse: bool | None = None) -> FeatureSet:
    """The features cfg.mtl.features asks for, trained in run_dir (or read from run_dir/features.pt)."""
    run_dir = Path(run_dir)
    mode = cfg.mtl.features
    if mode not in FEATURE_MODES:
        raise AttrnetError(f"unknown mtl.features {mode!r}; valid: {', '.join(FEATURE_MODES)}")
    device = device or resolve_device(cfg.train.device)
    cache = run_dir / "features.pt"
    key = feature_cache_key(cfg, data)
    reuse = cfg.mtl.reuse_features if reuse is None else reuse
    if reuse and cache.is_file():
        try:
            saved = model_file.load_file(cache, "feature cache")
        except AttrnetError as exc:  # a broken (or refused) cache is rebuilt, never fatal
            log.warning("ignoring unreadable feature cache %s (%s)", cache, exc)
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            log.info("reusing cached %s features from %s", mode, cache)
            logits = saved.get("logits")
            return FeatureSet(mode, saved["features"].float().numpy(), saved["checkpoint"],
                              None if logits is None else logits.numpy(), saved.get("info", {}), cached=True)
    t0 = time.perf_counter()
    if mode == "shared":
        model, cnn_result = train_shared_cnn(cfg, data, run_dir / "cnn", progress)
        feats, logits = shared_features(cfg, model, data, device, progress)
        checkpoint = str(run_dir / "cnn" / "checkpoints" / "best.pt")
        info: dict[str, Any] = {"cnn_test_mean_accuracy": cnn_result.get("mean_accuracy"),
                                "cnn_epochs": cnn_result.get("epochs")}
    else:
        states, info = train_attribute_cnns(cfg, data, device, None, progress)
        feats, logits = per_attribute_features(cfg, data, states, device, progress), None
        checkpoint = str(run_dir / "feature_cnns.pt")
        if cfg.mtl.save_feature_cnns:
            stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
            model_file.save_file(checkpoint, {"stacked_state": stacked, "attributes": list(data.table.names),
                                              "config": cfg.to_dict(), "num_models": len(states)})
        else:
            checkpoint = ""
    info["seconds"] = round(time.perf_counter() - t0, 3)
    fs = FeatureSet(mode, feats, checkpoint, logits, info)
    model_file.save_file(cache, {"key": key, "mode": mode, "features": torch.from_numpy(feats),
                                 "logits": None if logits is None else torch.from_numpy(logits),
                                 "checkpoint": checkpoint, "info": info})
    return fs
