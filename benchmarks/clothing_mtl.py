#!/usr/bin/env python3
"""Clothing Attributes: the paper's latent-task MTL vs independent classifiers vs the shared CNN's heads.

For each of --splits seeded train/val/test splits of the 1,485 images (data.split_seed = split id):
  1. one multi-attribute CNN is trained on that split's training part (the core's fit); its penultimate
     features are the features of every method on that split (attrnet.paper.features.compute_features);
  2. attrnet.paper.pipeline.fit_and_evaluate fits, on the same standardised features of the training part,
     the paper's MTL (fit_mtl; mu, gamma, lam, K picked on the validation part from --grid) and independent
     per-attribute squared-hinge classifiers (fit_independent; their ridge weight picked on validation
     likewise), and evaluates both and the CNN's own heads on the test part with the same threshold rule.

Prints one JSON line per (method, split) and a summary (mean +- std of the mean accuracy over splits, per
method and per attribute group) and writes everything to --out (JSON). Features are cached per split under
--workdir, so a rerun with another grid retrains nothing.

  CPU (minutes):  python benchmarks/clothing_mtl.py --device cpu --image-size 64 --epochs 10 --splits 2
  GPU (paper-like size):  python benchmarks/clothing_mtl.py --device cuda --image-size 224 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "clothing-attributes"
# Picked on each split's validation part; the baseline's ridge weight has its own axis. The loss is a sum
# over ~1,000 training images, so useful weights are large. L -> L/c, S -> c S leaves W = L S unchanged,
# so the penalty acts like ~ mu^(2/3) lam^(1/3) (minimised over c): mu and lam must grow together. With
# mu=1, lam=0.1 the MTL overfits and loses to a well-regularised independent baseline.
DEFAULT_GRID = {"mu": [10.0, 100.0, 1000.0], "gamma": [0.01], "lam": [10.0, 100.0, 1000.0], "latent_tasks": [16],
                "baseline_lam": [1.0, 10.0, 100.0, 1000.0, 10000.0]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Clothing Attributes folder (images/, labels/)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--image-size", type=int, default=0, help="default: 64 on CPU, 224 on GPU")
    p.add_argument("--epochs", type=int, default=0, help="CNN epochs (default: 10 on CPU, 30 on GPU)")
    p.add_argument("--splits", type=int, default=5, help="number of seeded splits")
    p.add_argument("--first-split", type=int, default=0, help="seed of the first split (to run splits in parts)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--pretrained", default="false", help="false | true | path to a weights file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--balance", action="store_true", help="class-balanced example weights in the solver")
    p.add_argument("--thresholds", default="zero", choices=["zero", "tuned"])
    p.add_argument("--grid", default=json.dumps(DEFAULT_GRID), help="JSON {mu, gamma, lam, latent_tasks, baseline_lam}")
    p.add_argument("--max-outer", type=int, default=30)
    p.add_argument("--workdir", default=str(REPO / "runs" / "clothing_mtl"), help="per-split run folders")
    p.add_argument("--out", default=None, help="JSON results (default: WORKDIR/results.json)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (data.cache_dir)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--measure-vmap", action="store_true",
                   help="only time the per-attribute CNN training, batched (vmap) vs a sequential loop, and exit")
    p.add_argument("--vmap-models", type=int, default=0, help="--measure-vmap: models (default: all 36)")
    p.add_argument("--vmap-steps", type=int, default=5, help="--measure-vmap: timed steps per model")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace, split: int, on_gpu: bool):
    """The Config of one split: clothing data with split_seed=split, a shared CNN, the MTL settings."""
    import yaml

    from attrnet.config import config_from_dict

    size = args.image_size or (224 if on_gpu else 64)
    epochs = args.epochs or (30 if on_gpu else 10)
    pretrained = yaml.safe_load(args.pretrained) if args.pretrained in ("true", "false") else args.pretrained
    return config_from_dict({
        "data": {"format": "clothing", "root": args.data, "image_size": size, "groups": "clothing",
                 "val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "split_seed": split,
                 "cache_dir": args.cache_dir},
        "model": {"backbone": args.backbone, "pretrained": pretrained},
        "train": {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
                  "seed": split},
        "mtl": {"enabled": True, "features": "shared", "balance": args.balance, "thresholds": args.thresholds,
                "grid": json.loads(args.grid), "max_outer": args.max_outer},
    }, "benchmarks/clothing_mtl.py")


def run_split(cfg, run_dir: Path, progress: bool = False) -> dict:
    """Features of one split (cached in run_dir), then every method on them: {method: report}, hyper, timings."""
    from attrnet.device import resolve_device
    from attrnet.engine.setup import prepare_data
    from attrnet.paper.features import compute_features
    from attrnet.paper.pipeline import fit_and_evaluate

    t0 = time.perf_counter()
    data = prepare_data(cfg, progress=progress)
    device = resolve_device(cfg.train.device)
    feats = compute_features(cfg, data, run_dir, device, progress)
    t_feat = time.perf_counter() - t0
    out = fit_and_evaluate(cfg, data, feats, device)
    reports = {"mtl": out.result, **out.baselines}
    return {"reports": reports, "hyper": out.hyper, "search": out.search,
            "timings": {"features": round(t_feat, 2), "features_cached": feats.cached,
                        **{k: round(v, 2) for k, v in out.timings.items()}},
            "n": {s: int(len(data.indices(s))) for s in ("train", "val", "test")}}


def method_rows(split: int, run: dict) -> list[dict]:
    rows = []
    for method, rep in run["reports"].items():
        row = {"split": split, "method": method, "mean_accuracy": round(rep["mean_accuracy"], 4),
               "mean_balanced_accuracy": round(rep["mean_balanced_accuracy"], 4),
               "groups": {g: round(v["mean_accuracy"], 4) for g, v in (rep.get("groups") or {}).items()}}
        if method == "mtl":
            row["hyper"] = {k: run["hyper"][k] for k in ("mu", "gamma", "lam", "K")}
        if method == "independent":
            row["lam"] = rep.get("lam")
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """{method: {"mean_accuracy": [mean, std], "groups": {g: [mean, std]}, "splits": n}} over the splits."""
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = np.array([r["mean_accuracy"] for r in mine])
        groups = {g: np.array([r["groups"][g] for r in mine]) for g in mine[0]["groups"]}
        out[method] = {"mean_accuracy": [float(acc.mean()), float(acc.std())],
                       "groups": {g: [float(v.mean()), float(v.std())] for g, v in groups.items()},
                       "splits": len(mine)}
    return out


def format_summary(summary: dict) -> str:
    methods = list(summary)
    groups = list(next(iter(summary.values()))["groups"]) if summary else []
    width = max([len("mean accuracy")] + [len(g) for g in groups])
    lines = ["".ljust(width) + "".join(m.rjust(18) for m in methods)]
    cell = lambda v: f"{v[0]:.4f} ± {v[1]:.4f}".rjust(18)  # noqa: E731
    lines.append("mean accuracy".ljust(width) + "".join(cell(summary[m]["mean_accuracy"]) for m in methods))
    for g in groups:
        lines.append(g.ljust(width) + "".join(cell(summary[m]["groups"][g]) for m in methods))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("PIL", "matplotlib", "attrnet.mtl.solver", "attrnet.engine.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from attrnet import atomic
    from attrnet.device import resolve_device

    device = resolve_device(args.device)
    if args.measure_vmap:
        from attrnet.bench.vmap import measure_batched_speedup
        from attrnet.engine.setup import prepare_data

        cfg = make_config(args, args.first_split, device.type == "cuda")
        out = measure_batched_speedup(cfg, prepare_data(cfg, progress=False), device, steps=args.vmap_steps,
                                      num_models=args.vmap_models or None)
        print(json.dumps(out), flush=True)
        return 0
    workdir = Path(args.workdir)
    rows, runs = [], {}
    t0 = time.perf_counter()
    for split in range(args.first_split, args.first_split + args.splits):
        cfg = make_config(args, split, device.type == "cuda")
        run = run_split(cfg, workdir / f"split{split}", progress=not args.quiet)
        runs[split] = {k: run[k] for k in ("hyper", "search", "timings", "n")}
        for row in method_rows(split, run):
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = summarize(rows)
    print(format_summary(summary))
    cfg = make_config(args, args.first_split, device.type == "cuda")
    result = {"args": vars(args), "device": str(device), "image_size": list(cfg.image_hw()),
              "epochs": cfg.train.epochs, "seconds": round(time.perf_counter() - t0, 1),
              "features": "one shared CNN per split, trained on that split's training part",
              "rows": rows, "summary": summary, "splits": runs}
    out = Path(args.out) if args.out else workdir / "results.json"
    atomic.write_json(out, to_jsonable(result))
    print(json.dumps({"summary": {m: s["mean_accuracy"] for m, s in summary.items()}, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
from attrnet.report.jsonable import to_jsonable
