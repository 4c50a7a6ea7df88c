"""The precision_modes case: attrnet's training epoch and its prediction pass in fp32, fp32 + channels_last,
bf16 autocast and bf16 autocast + channels_last, interleaved and repeated, on the built cache."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import torch

from attrnet.bench.measure import clock
from attrnet.engine.evaluate import predict_logits
from attrnet.engine.setup import make_loader
from attrnet.engine.train import train_one_epoch
from attrnet.precision import Precision, cpu_has_native_bf16

MODES = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def mode_name(p: Precision) -> str:
    return p.name + ("+channels_last" if p.channels_last else "")


def _stats(runs: list[float]) -> dict:
    med = statistics.median(runs)
    return {"median": round(med, 1), "min": round(min(runs), 1), "max": round(max(runs), 1),
            "spread_pct": round(100 * (max(runs) - min(runs)) / med, 1) if med else None,
            "runs": [round(r, 1) for r in runs]}


def _timed(device, fn) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds, fn's result). With one compute thread (OMP_NUM_THREADS=1)
    the CPU seconds are the work itself: a process that other jobs keep off the cores loses wall time,
    not CPU time. With more threads they also count OpenMP's spin-waiting."""
    w0, c0 = clock(device), time.process_time()
    out = fn()
    return clock(device) - w0, time.process_time() - c0, out


def _train(bench, cfg, t: dict) -> tuple[float, float, float]:
    """One untimed step (oneDNN / cuDNN set-up for this memory format and dtype), then one timed epoch:
    (images per wall second, images per CPU second, the epoch's mean loss)."""
    one_step = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps_per_epoch=1))
    train_one_epoch(t["train_model"], t["loader"], t["opt"], t["sched"], one_step, t["precision"], 0,
                    progress=False)
    wall, cpu, loss = _timed(bench.device, lambda: train_one_epoch(
        t["train_model"], t["loader"], t["opt"], t["sched"], cfg, t["precision"], 1, progress=False))
    n = len(t["loader"]) * cfg.train.batch_size
    return n / wall, n / cpu, loss


def _predict(bench, t: dict, batch_size: int) -> tuple[float, float, int]:
    """engine.evaluate.predict_logits (validation, evaluate) over the training rows: one untimed batch, then
    all of them: (images per wall second, images per CPU second, images)."""
    data, dev = bench.prepared(), bench.device
    images = t["loader"].images  # the training loader's: in GPU memory once, where it fits
    idx = data.indices("train")
    predict_logits(t["model"], make_loader(images, data, idx[:batch_size], batch_size, dev, False), t["precision"])
    loader = make_loader(images, data, idx, batch_size, dev, False)
    wall, cpu, (logits, _) = _timed(dev, lambda: predict_logits(t["model"], loader, t["precision"]))
    return len(logits) / wall, len(logits) / cpu, len(logits)


def precision_modes(bench) -> dict:
    """Repeats x the four modes. Each repeat runs the modes in a rotated order, so that a change in the
    machine's load during the run falls on every mode alike; each run builds its model afresh."""
    bench.prepared()
    repeats, predict_batch = bench.repeats, 2 * bench.batch_size  # fit() validates with twice the batch
    runs = {(m, what): [] for m in MODES for what in ("train", "train_cpu", "predict", "predict_cpu")}
    losses: dict = {}
    n_train = n_predict = 0
    for r in range(repeats):
        for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
            cfg = bench.config(precision=mode[0], channels_last=mode[1])
            t = bench._trainer(cfg)
            wall, cpu, loss = _train(bench, cfg, t)
            runs[mode, "train"].append(wall)
            runs[mode, "train_cpu"].append(cpu)
            losses.setdefault(mode, loss)  # the first repeat's; every run has the same seed and data
            n_train = len(t["loader"]) * cfg.train.batch_size
            wall, cpu, n_predict = _predict(bench, t, predict_batch)
            runs[mode, "predict"].append(wall)
            runs[mode, "predict_cpu"].append(cpu)
            del t
    median = {key: statistics.median(v) for key, v in runs.items()}
    modes = {}
    for mode in MODES:
        name = mode_name(Precision.resolve(*mode, bench.device))
        modes[name] = {"train_images_per_s": _stats(runs[mode, "train"]),
                       "predict_images_per_s": _stats(runs[mode, "predict"]),
                       "train_images_per_cpu_s": _stats(runs[mode, "train_cpu"]),
                       "predict_images_per_cpu_s": _stats(runs[mode, "predict_cpu"])}
        for what in ("train", "predict", "train_cpu", "predict_cpu"):
            modes[name][f"{what}_over_fp32"] = round(median[mode, what] / median[MODES[0], what], 2)
        loss = losses[mode]
        modes[name]["timed_epoch_loss"] = round(loss, 4) if math.isfinite(loss) else str(loss)
    cpu = bench.device.type == "cpu"
    return {"precision": "the four modes (see modes)", "repeats": repeats, "train_images": n_train,
            "predict_images": n_predict, "predict_batch_size": predict_batch,
            "native_bf16": cpu_has_native_bf16() if cpu else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "auto": mode_name(Precision.from_config(bench.config(), bench.device)), "modes": modes}
