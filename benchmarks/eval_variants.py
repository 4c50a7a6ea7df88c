"""Paired comparison of inference variants of one trained run: which checkpoint (best, last), which weights
(the trained ones or the EMA average, when the run kept one) and which test-time augmentation (none, flip,
flip_shift).

Every variant is scored on the same images, so the differences between rows are not training noise.
Thresholds are tuned on the validation split for each variant and applied to the test split, as `finish`
does (`test`), or tuned on the 0.01..0.99 grid instead (`test_grid_thresholds`); `*_at_0.5` use 0.5.
Choose on the `val` columns, read `test` beside them.

usage: python benchmarks/eval_variants.py RUN_DIR [--device cpu] [--batch-size 256] [--tta none,flip,flip_shift]
                                         [--weights trained,ema] [--checkpoints best,last]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attrnet import metrics
from attrnet.config import config_from_dict
from attrnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
from attrnet.engine.setup import images_for_device, make_loader, prepare_data, resolve_device
from attrnet.engine.evaluate import predict_probs
from attrnet.engine.setup import Precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tta", default="none,flip,flip_shift", help="comma-separated test-time augmentations")
    ap.add_argument("--weights", default="trained,ema", help="trained, ema (where the run kept one), or both")
    ap.add_argument("--checkpoints", default="best,last")
    args = ap.parse_args()
    run = Path(args.run)
    device = resolve_device(args.device)
    first = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = config_from_dict(first["config"])
    data = prepare_data(cfg, progress=False)
    images = images_for_device(data.decoded, device, cfg.data.cache_on_device)
    precision = Precision(cfg, device)
    names = data.table.names
    loaders = {s: make_loader(images, data, data.indices(s), args.batch_size, device, False) for s in ("val", "test")}
    for which in args.checkpoints.split(","):
        ckpt = load_checkpoint(run / "checkpoints" / f"{which}.pt")
        for weights in [w for w in args.weights.split(",") if w == "trained" or ckpt.get("ema")]:
            state = dict(ckpt, ema=None) if weights == "trained" else ckpt
            for tta in args.tta.split(","):
                model = model_from_checkpoint(state, tta).to(device)
                if precision.channels_last:
                    model = model.to(memory_format=torch.channels_last)
                vp, vl = predict_probs(model, loaders["val"], precision)
                tp, tl = predict_probs(model, loaders["test"], precision)
                thresholds = metrics.tune_thresholds(vp, vl, cfg.train.threshold_metric)
                on_grid = metrics.tune_thresholds(vp, vl, cfg.train.threshold_metric, grid=True)
                row = {"checkpoint": which, "epoch": ckpt["epoch"] + 1, "weights": weights, "tta": tta,
                       "val_at_0.5": metrics.attribute_metrics(vp, vl, names, 0.5)["mean_accuracy"],
                       "test_at_0.5": metrics.attribute_metrics(tp, tl, names, 0.5)["mean_accuracy"],
                       "test": metrics.attribute_metrics(tp, tl, names, thresholds)["mean_accuracy"],
                       "test_grid_thresholds": metrics.attribute_metrics(tp, tl, names, on_grid)["mean_accuracy"]}
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
