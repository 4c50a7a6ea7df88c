"""How fast the decoded-image cache is built: one process decoding in a loop (the per-core rate), then
`attrnet.data.cache.decode_all` into an empty cache folder with 1, 2, ... worker processes.

usage: python benchmarks/decode_rate.py [--data CELEBA_FOLDER] [--n 3000] [--size 128] [--workers 1,2,4]
Without --data, synthetic 178x218 JPEGs (CelebA's size) are written once into --workdir.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from attrnet.bench.folder import ensure_synthetic_celeba
from attrnet.data.cache import decode_all
from attrnet.data.images import load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a CelebA-layout folder (default: synthetic 178x218 JPEGs)")
    ap.add_argument("--n", type=int, default=3000, help="images to decode")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "attrnet-decode-rate"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    root = Path(args.data) if args.data else ensure_synthetic_celeba(work / "data", args.n, 40)
    paths = sorted((root / "img_align_celeba").glob("*.jpg"))[:args.n]
    size = (args.size, args.size)
    base = {"images": len(paths), "source": str(root), "size": args.size, "cpu_cores": os.cpu_count()}
    for _ in range(args.repeats):
        k = min(500, len(paths))
        t0 = time.perf_counter()
        for p in paths[:k]:
            load_image(p, size)
        print(json.dumps({**base, "case": "one_process_loop", "images": k,
                          "images_per_s": round(k / (time.perf_counter() - t0), 1)}), flush=True)
        for w in (int(x) for x in args.workers.split(",")):
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            t0 = time.perf_counter()
            decode_all(paths, size, cache_root=cache, workers=w, progress=False)
            print(json.dumps({**base, "case": "decode_all", "workers": w,
                              "images_per_s": round(len(paths) / (time.perf_counter() - t0), 1),
                              "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)
    shutil.rmtree(work / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
