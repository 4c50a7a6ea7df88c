"""Paired comparison of inference variants of one trained run: which checkpoint (best: the model file; last:
the last epoch), which weights (the trained ones or the EMA average, when the run kept one), which test-time
augmentation (none, flip, flip_shift), and thresholds at 0.5 or tuned per attribute on the validation split.

Every variant is scored on the same images, so the differences between rows are not training noise. One JSON
line per (checkpoint, weights, tta) with the test split's mean accuracy at 0.5 (`test_at_0.5`) and at the
thresholds tuned on validation (`test_tuned`), mean balanced accuracy and F1 at 0.5, and the validation
accuracy at 0.5 (`val_at_0.5`, what best-by-validation selection looks at).

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
from attrnet.device import resolve_device
from attrnet.engine.evaluate import predict_probs
from attrnet.engine.setup import images_for_device, make_loader, prepare_data
from attrnet.inference.checkpoint import load_checkpoint, network_from_checkpoint, preprocessing_of
from attrnet.inference.forward import make_normalize
from attrnet.precision import Precision


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
    precision = Precision.from_config(cfg, device)
    names = data.table.names
    pre = preprocessing_of(first)
    normalize = make_normalize(pre.normalization, pre.channels).to(device)
    loaders = {s: make_loader(images, data, data.indices(s), args.batch_size, device, False) for s in ("val", "test")}
    for which in args.checkpoints.split(","):
        ckpt = load_checkpoint(run / "checkpoints" / f"{which}.pt")
        for weights in [w for w in args.weights.split(",") if w == "trained" or ckpt.get("ema")]:
            model = network_from_checkpoint(dict(ckpt, ema=None) if weights == "trained" else ckpt).to(device)
            if precision.channels_last:
                model = model.to(memory_format=torch.channels_last)
            for tta in args.tta.split(","):
                vp, vl = predict_probs(model, loaders["val"], precision, tta=tta, normalize=normalize)
                tp, tl = predict_probs(model, loaders["test"], precision, tta=tta, normalize=normalize)
                at_half = metrics.attribute_metrics(tp, tl, names, 0.5)
                tuned = metrics.tune_thresholds(vp, vl, cfg.train.threshold_metric) if len(vl) else 0.5
                row = {"run": str(run), "checkpoint": which, "epoch": ckpt["epoch"] + 1,
                       "swa": bool(ckpt.get("swa")), "weights": weights, "tta": tta,
                       "val_at_0.5": metrics.attribute_metrics(vp, vl, names, 0.5)["mean_accuracy"] if len(vl) else None,
                       "test_at_0.5": at_half["mean_accuracy"],
                       "test_tuned": metrics.attribute_metrics(tp, tl, names, tuned)["mean_accuracy"],
                       "test_balanced_at_0.5": at_half["mean_balanced_accuracy"], "test_f1_at_0.5": at_half["mean_f1"]}
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
