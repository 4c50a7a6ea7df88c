"""How much faster the M single-attribute CNNs of the paper's per-attribute features train together (one vmapped
pass over stacked weights) than one after the other: benchmarks/clothing_mtl.py --measure-vmap prints it
(docs/results.md, "Training M single-attribute CNNs together")."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from attrnet.config import Config
from attrnet.device import resolve_device
from attrnet.engine.setup import PreparedData
from attrnet.paper.cnns import BatchedCNNs, LoopCNNs, SequentialCNNs, make_attribute_models
from attrnet.paper.features import epoch_batches, train_loader
from attrnet.precision import Precision


def measure_batched_speedup(cfg: Config, data: PreparedData, device: torch.device | None = None,
                            steps: int = 3, num_models: int | None = None, warmup: int = 2) -> dict:
    """Time the batched (vmap) and the sequential training of the same models on the same batches.

    Both start from the same initial weights and do warmup + steps optimizer steps per model on the same
    batches. The two are interleaved round by round (one batched step of all M models, then one step of
    model 1, 2, ..., M alone on the same batch, then one LoopCNNs step), so on a machine shared with other
    jobs all see the same load; the first `warmup` rounds (allocations, kernel selection) are not timed. Throughput is
    images x models per second; ratio = batched / sequential, from the median round times.
    """
    device = device or resolve_device(cfg.train.device)
    M = min(num_models or len(data.table.names), len(data.table.names))
    in_chans = 1 if cfg.data.grayscale else 3
    _, loader, n_steps = train_loader(cfg, data, device)
    batches: list = []
    epoch = 0
    while len(batches) < steps + warmup:
        batches += list(epoch_batches(cfg, loader, epoch, n_steps))
        epoch += 1
    batches = [(x, y[:, :M]) for x, y in batches[:steps + warmup]]
    precision = Precision.from_config(cfg, device)
    models = make_attribute_models(cfg.model, M, in_chans, cfg.train.seed)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    batched = BatchedCNNs([copy.deepcopy(m) for m in models], device)
    batched.setup_optimizer(cfg, 1, steps + warmup)
    loop = LoopCNNs([copy.deepcopy(m) for m in models], device)
    loop.setup_optimizer(cfg, 1, steps + warmup)
    seq = SequentialCNNs(models, device)
    seq.setup_optimizer(cfg, 1, steps + warmup)
    t_b, t_s, t_l = [], [], []
    for i, (x, y) in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        batched.step(x, y, autocast=precision.autocast())
        sync()
        t1 = time.perf_counter()
        for m in range(M):
            seq.step(m, x, y, autocast=precision.autocast())
        sync()
        t2 = time.perf_counter()
        loop.step(x, y, autocast=precision.autocast())
        sync()
        t3 = time.perf_counter()
        if i >= warmup:
            t_b.append(t1 - t0)
            t_s.append(t2 - t1)
            t_l.append(t3 - t2)
    work = int(batches[0][0].shape[0]) * M  # images x models per round
    med_b, med_s, med_l = float(np.median(t_b)), float(np.median(t_s)), float(np.median(t_l))
    out = {"device": str(device), "models": M, "steps": steps, "warmup": warmup,
           "batch_size": int(batches[0][0].shape[0]), "image_size": list(cfg.image_hw()),
           "backbone": cfg.model.backbone, "precision": "bf16" if precision.bf16 else "fp32",
           "batched_round_seconds": [round(t, 4) for t in t_b], "sequential_round_seconds": [round(t, 4) for t in t_s],
           "batched_images_models_per_s": round(work / med_b, 2),
           "sequential_images_models_per_s": round(work / med_s, 2),
           "loop_images_models_per_s": round(work / med_l, 2)}
    out["ratio"] = round(med_s / med_b, 3)  # vmap over the sequential loop
    out["loop_ratio"] = round(med_s / med_l, 3)
    return out
