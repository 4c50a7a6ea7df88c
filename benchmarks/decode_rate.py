"""How fast the decoded-image cache is built: where one image's time goes (read, header, decode, resize, copy
into the cache), one process decoding in a loop (the per-core rate), `attrnet.data.cache.decode_all` into an
empty cache folder with 1, 2, ... worker processes, and batches of 64 decoded on --device in one call
(attrnet.data.device_decode: nvJPEG on a GPU).

usage: python benchmarks/decode_rate.py [--data CELEBA_FOLDER] [--n 3000] [--size 128] [--workers 1,2,4]
                                        [--device cuda]
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
    ap.add_argument("--device", default="cpu", help="where device_batch decodes (cpu or cuda)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    root = Path(args.data) if args.data else ensure_synthetic_celeba(work / "data", args.n, 40)
    paths = sorted((root / "img_align_celeba").glob("*.jpg"))[:args.n]
    size = (args.size, args.size)
    base = {"images": len(paths), "source": str(root), "size": args.size, "cpu_cores": os.cpu_count()}
    print(json.dumps({**base, "case": "stages_us_per_image", **stages(paths[:500], size)}), flush=True)
    print(json.dumps({**base, "case": "device_batch", **device_batch(paths, size, torch.device(args.device))}),
          flush=True)
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


def stages(paths: list[Path], size: tuple[int, int]) -> dict:
    """Microseconds per image in each step of the CPU path (one process, one thread), summed over the images."""
    import io

    import numpy as np
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from attrnet.data.images import resize_image

    spent = dict.fromkeys(("read", "header", "decode", "resize", "copy"), 0.0)
    out = np.zeros((len(paths), 3, *size), dtype=np.uint8)
    for i, p in enumerate(paths):
        t0 = time.perf_counter()
        data = p.read_bytes()
        t1 = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            im.size
        t2 = time.perf_counter()
        img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        t3 = time.perf_counter()
        img = resize_image(img, size)
        t4 = time.perf_counter()
        out[i] = img.numpy()
        t5 = time.perf_counter()
        for k, a, b in (("read", t0, t1), ("header", t1, t2), ("decode", t2, t3), ("resize", t3, t4), ("copy", t4, t5)):
            spent[k] += b - a
    per = {k: round(1e6 * v / len(paths), 1) for k, v in spent.items()}
    return {**per, "total": round(sum(per.values()), 1), "images_per_s": round(len(paths) / sum(spent.values()), 1)}


def device_batch(paths: list[Path], size: tuple[int, int], device: torch.device) -> dict:
    """Batches of 64 through data.device_decode.decode_batch on the device (the bytes already read)."""
    from attrnet.data.device_decode import decode_batch, read_encoded

    encoded = [read_encoded(p) for p in paths]
    decode_batch(encoded[:64], size, "squash", device)  # untimed: the decoder's set-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(0, len(encoded), 64):
        decode_batch(encoded[i:i + 64], size, "squash", device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"device": str(device), "images_per_s": round(len(encoded) / (time.perf_counter() - t0), 1)}


if __name__ == "__main__":
    main()
