"""Training-step time of every loss weighting relative to equal weighting, in the same process.

Each method trains the same network (attrnet's AttributeNet from a config, random images and labels with
some unknown) through attrnet.engine.train.train_one_epoch; the methods take turns, one timed epoch of
--steps steps each per round, for --rounds rounds after an untimed warm-up, and the median per round is
reported (a busy machine slows every method alike within a round).

With --libmtl, also the real LibMTL 1.1.5 (PyPI; not a dependency of attrnet, not copied here) running
its EW, MGDA, PCGrad, CAGrad and IMTL in its per-parameter mode (rep_grad=False: one backward pass per
attribute, the gradients of all shared parameters) on the same model, batches, image size, device and
precision, timed the same way, with vs_ew against attrnet's ew of the same run. LibMTL cannot mask unknown
labels: it gets attrnet's masked per-attribute means. How the two are joined, and the patches LibMTL 1.1.5
needs on current torch (applied in memory at run time): benchmarks/libmtl_adapter.py. Get LibMTL with

    pip install --no-deps --target /tmp/libmtl LibMTL==1.1.5     # then --libmtl --libmtl-path /tmp/libmtl

    python benchmarks/weighting_step_time.py --device cuda --attributes 40 --batch 64 --size 64 \
        --libmtl --libmtl-path /tmp/libmtl
    python benchmarks/weighting_step_time.py --device cpu --batch 16 --size 32 --steps 4 --rounds 3

One JSON line per method: {"method", "ms_per_step", "vs_ew", ...}; LibMTL's are named libmtl_<method>, with
"vs_attrnet": the ratio to attrnet's version of the same method (ew, mgda, pcgrad, cagrad, imtl_g) when timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from attrnet.config import load_config
from attrnet.config_rules import WEIGHTINGS
from attrnet.data.batches import BatchLoader
from attrnet.engine import train as T
from attrnet.models.build import build_model
from attrnet.precision import Precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    ap.add_argument("--libmtl", action="store_true", help="also LibMTL 1.1.5's methods (per-parameter)")
    ap.add_argument("--libmtl-path", help="a folder holding LibMTL (pip install --no-deps --target DIR)")
    ap.add_argument("--libmtl-methods", default="EW,MGDA,PCGrad,CAGrad,IMTL")
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
    libmtl = {}  # our name -> LibMTL's
    if args.libmtl:
        import libmtl_adapter as LA  # next to this script
        LA.import_libmtl(args.libmtl_path)
        libmtl = {f"libmtl_{k.lower()}": k for k in args.libmtl_methods.split(",")}
    runs = {}
    for name in methods + list(libmtl):
        cfg = load_config(None, [f"model.backbone={args.backbone}", f"data.image_size={args.size}",
                                 f"train.batch_size={b}", f"train.max_steps_per_epoch={args.steps}",
                                 f"train.device={args.device}", "train.log_every=100000",
                                 f"train.weighting={'ew' if name in libmtl else name}", *args.overrides])
        torch.manual_seed(0)
        model = build_model(cfg.model, m, 3).to(device)
        precision = Precision.from_config(cfg, device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if name in libmtl:  # the weighting is LibMTL's method merged with the model (its own parameters too)
            weighting = LA.libmtl_weighting(libmtl[name], model, m, device)
        else:
            weighting = T.make_weighting_for(cfg, m, device)
        opt = T.build_optimizer(weighting if name in libmtl else model, cfg, device)
        sched = T.build_scheduler(opt, cfg, 10_000)
        runs[name] = (cfg, model, opt, sched, precision, weighting)

    def epoch(name: str, e: int) -> None:
        cfg, model, opt, sched, precision, weighting = runs[name]
        if name in libmtl:
            LA.libmtl_epoch(weighting, loader, opt, sched, cfg, precision, e, args.steps)
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
        cfg, model, _, _, precision, _ = runs[name]
        row = {"method": name, "ms_per_step": round(med * 1e3, 2), "vs_ew": round(med / ew, 3),
               "min_ms": round(min(ts) * 1e3, 2), "max_ms": round(max(ts) * 1e3, 2), "attributes": m,
               "batch": b, "size": args.size, "device": args.device, "backbone": args.backbone,
               "precision": precision.describe(),
               "finite": bool(all(torch.isfinite(p).all() for p in model.parameters()))}  # after the timing
        twin = LA.METHODS.get(libmtl[name]) if name in libmtl else None
        if twin in times:
            row["vs_attrnet"] = round(med / statistics.median(times[twin]), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
