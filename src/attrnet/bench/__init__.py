"""`attrnet bench`: training and prediction throughput, one dict (one JSON line) per case.

Cases, on one CelebA-layout folder of 178x218 JPEGs (CelebA's size) with 40 attributes:
  seed_loop             the original script's loop: one image per optimizer step, fp32, Adam, a BCE per attribute,
                        images pre-decoded into float tensors, loss.item() every step
  dataloader_eager      a plain batched loop: torch DataLoader (PIL decode + torchvision transforms per image,
                        one worker per core), in attrnet's auto precision (attrnet.precision); one epoch
  attrnet_cold          attrnet's pipeline from nothing: decode into an empty cache, then the first epoch
  attrnet_warm          attrnet's epochs once the cache exists (after one untimed warm-up epoch)
  attrnet_warm_compile  the same with train.compile=true (CPU: only when named in --cases)
  attrnet_warm_ddp1     the same inside DistributedDataParallel with world size 1 (CUDA only): per-rank DDP cost
  predict_folder        attrnet predict's path (iter_files + inference.AttributeModel) over the JPEG folder (nvjpeg on
                        GPU, DataLoader workers on CPU)
  predict_runtimes      JPEG folder -> probabilities on the CPU: torch fp32, torch bf16 + channels_last (native
                        bf16 only), ONNX Runtime (exported graph), and decoding alone; same images, one run
  precision_modes       attrnet's training epoch and its prediction pass (validation, evaluate) from the cache in
                        fp32, fp32 + channels_last, bf16 autocast, bf16 autocast + channels_last: interleaved,
                        repeated (median, min, max), each against fp32; per wall second and per CPU second
  cache_memory          peak memory of building the decoded cache, in a subprocess of its own
Every case uses the same network (attrnet's ResNet with one linear classifier per attribute), so the
differences are the loops' and pipelines' alone.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from attrnet.bench.cases import Bench
from attrnet.bench.folder import ensure_synthetic_celeba
from attrnet.device import resolve_device
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)

CASES = ("seed_loop", "dataloader_eager", "attrnet_cold", "attrnet_warm", "attrnet_warm_compile",
         "attrnet_warm_ddp1", "predict_folder", "precision_modes", "predict_runtimes", "cache_memory")


def _summary(rows: dict[str, dict], device: torch.device) -> dict | None:
    out: dict = {"case": "summary", "device": str(device)}
    speed = {case: r["train_images_per_s"] for case, r in rows.items() if "train_images_per_s" in r}
    if len(speed) >= 2:
        out["train_images_per_s"] = speed
        seed, warm, ddp1 = speed.get("seed_loop"), speed.get("attrnet_warm"), speed.get("attrnet_warm_ddp1")
        if seed and warm:
            out["attrnet_warm_over_seed_loop"] = round(warm / seed, 1)
        if warm and ddp1:
            out["ddp1_overhead_pct"] = round(100 * (warm / ddp1 - 1), 1)
    modes = rows.get("precision_modes", {}).get("modes")
    if modes:
        out["precision_auto"] = rows["precision_modes"]["auto"]
        for what in ("train", "predict", "train_cpu", "predict_cpu"):
            out[f"precision_{what}_over_fp32"] = {m: r[f"{what}_over_fp32"] for m, r in modes.items()}
    return out if len(out) > 2 else None


def run_bench(args) -> Iterator[dict]:
    """Yield one dict per case named in args.cases (see the module docstring), then a summary."""
    cases = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise AttrnetError(f"unknown bench case(s) {', '.join(unknown) or '(none)'}; valid: all, {', '.join(CASES)}")
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="attrnet-bench-") if own_workdir else args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.data:
            root = Path(args.data)  # --n does not apply: every image of the folder (its train split) is used
        else:
            n = args.n or (20000 if device.type == "cuda" else 256)
            root = ensure_synthetic_celeba(workdir / f"celeba-{n}x{args.attributes}", n, args.attributes)
        bench = Bench(args, device, root, workdir)
        rows: dict[str, dict] = {}
        for case in cases:
            log.info("bench: %s", case)
            rows[case] = bench.run(case)
            yield rows[case]
        summary = _summary(rows, device)
        if summary:
            yield summary
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
