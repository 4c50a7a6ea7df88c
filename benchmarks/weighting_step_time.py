"""Training-step time of every loss weighting relative to equal weighting, in the same process.

Each method trains the same network (attrnet's AttributeNet from a config, random images and labels with
some unknown) through attrnet.engine.train.train_one_epoch; the methods take turns, one timed epoch of
--steps steps each per round, for --rounds rounds after an untimed warm-up, and the median per round is
reported (a busy machine slows every method alike within a round). With --libmtl, also LibMTL's way of
running a gradient method: the per-task gradients of all shared parameters, one backward pass per attribute
(MGDA on them, our solver), for the ratio the issue asks for.

    python benchmarks/weighting_step_time.py --device cuda --attributes 40 --batch 256 --size 128
    python benchmarks/weighting_step_time.py --device cpu --batch 16 --size 32 --steps 4 --rounds 3

One JSON line per method: {"method", "ms_per_step", "vs_ew", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from attrnet.config import WEIGHTINGS, load_config
from attrnet.data.batches import BatchLoader
from attrnet.engine import setup
from attrnet.engine import train as T
from attrnet.losses import attribute_bce
from attrnet.models.build import build_model
from attrnet.weighting.solvers import convex_min, normalized_gram


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def libmtl_mgda_epoch(model, loader, opt, cfg, precision, steps: int) -> None:
    """MGDA on the gradients of every shared parameter: one backward pass per attribute (LibMTL, rep_grad=False)."""
    shared = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
    heads = [p for n, p in model.named_parameters() if n.startswith("heads.")]
    gen = torch.Generator(device=loader.device).manual_seed(0)
    model.train()
    for i, (x, y) in enumerate(loader.epoch(0)):
        if i >= steps:
            break
        x, y = T.prepare_batch(x, y, cfg, gen, None, precision.channels_last)
        with precision.autocast():
            logits = model(x)
        losses = attribute_bce(logits, y).per_attribute()
        m = losses.shape[0]
        flat = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(losses[k], shared, retain_graph=True)])
                            for k in range(m)]).float()
        present = torch.ones(m, dtype=torch.bool, device=flat.device)
        w = convex_min(normalized_gram((flat @ flat.T).double()), torch.zeros(m, dtype=torch.float64,
                                                                            device=flat.device), 1.0, present)
        combined = w.float() @ flat
        opt.zero_grad(set_to_none=True)
        (w.float() * losses).sum().backward(inputs=heads)
        offset = 0
        for p in shared:
            p.grad = combined[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attributes", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(WEIGHTINGS))
    ap.add_argument("--libmtl", action="store_true", help="also LibMTL-style MGDA on all shared parameters")
    ap.add_argument("overrides", nargs="*", help="config key=value, e.g. train.precision=fp32")
    args = ap.parse_args()
    device = torch.device(args.device)
    m, b = args.attributes, args.batch
    rng = np.random.default_rng(0)
    n = b * (args.steps + 1)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, args.size, args.size), dtype=np.uint8))
    labels = np.where(rng.random((n, m)) < 0.5, 1.0, 0.0)
    labels[rng.random((n, m)) < 0.2] = np.nan
    loader = BatchLoader(images.to(device), labels, np.arange(n), b, device, shuffle=True, drop_last=True)
    methods = args.methods.split(",")
    runs = {}
    for name in methods + (["libmtl_mgda"] if args.libmtl else []):
        cfg = load_config(None, [f"model.backbone={args.backbone}", f"data.image_size={args.size}",
                                 f"train.batch_size={b}", f"train.max_steps_per_epoch={args.steps}",
                                 f"train.device={args.device}", "train.log_every=100000",
                                 f"train.weighting={'ew' if name == 'libmtl_mgda' else name}", *args.overrides])
        torch.manual_seed(0)
        model = build_model(cfg.model, m, 3).to(device)
        precision = setup.Precision(cfg, device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = T.build_optimizer(model, cfg, device)
        sched = T.build_scheduler(opt, cfg, 10_000)
        weighting = T.make_weighting_for(cfg, m, device)
        runs[name] = (cfg, model, opt, sched, precision, weighting)

    def epoch(name: str, e: int) -> None:
        cfg, model, opt, sched, precision, weighting = runs[name]
        if name == "libmtl_mgda":
            libmtl_mgda_epoch(model, loader, opt, cfg, precision, args.steps)
        else:
            T.train_one_epoch(model, loader, opt, sched, cfg, precision, e, progress=False, weighting=weighting)

    for name in runs:  # warm-up: allocations, kernels, Triton compilation
        epoch(name, 0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in runs:
            _sync(device)
            t0 = time.perf_counter()
            epoch(name, r + 1)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps)
    ew = statistics.median(times["ew"]) if "ew" in times else float("nan")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(json.dumps({"method": name, "ms_per_step": round(med * 1e3, 2), "vs_ew": round(med / ew, 3),
                          "min_ms": round(min(ts) * 1e3, 2), "max_ms": round(max(ts) * 1e3, 2),
                          "attributes": m, "batch": b, "size": args.size, "device": args.device,
                          "backbone": args.backbone}), flush=True)


if __name__ == "__main__":
    main()
