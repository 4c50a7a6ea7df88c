"""`attrnet predict --ray` (Ray Data) against plain `attrnet predict` on one folder of N images, in one invocation:
images/s of each, the same rows (probabilities within the CSV's rounding), then a Ray run killed part-way and run
again: how many files the rerun predicted and how many it found finished.

usage: python benchmarks/ray_predict.py [MODEL] [--n 10000] [--untrained resnet18:128] [--kill-after-s 30]
MODEL: a run folder, checkpoint or exported folder (default: an untrained --untrained network, for speed only).
Images: the shared CelebA sample repeated up to N files (hard links; synthetic faces without it). Prints one
JSON object and a Markdown table. Needs attrnet[ray].
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import CELEBA, untrained_model  # noqa: E402


def image_folder(folder: Path, n: int) -> Path:
    """N image files: CelebA's repeated by hard links (or copies across devices), else synthetic faces."""
    folder.mkdir(parents=True)
    if CELEBA.is_dir():
        files = sorted(CELEBA.glob("*.jpg"))
    else:
        from attrnet.data.synthetic import write_synthetic_celeba
        files = sorted((write_synthetic_celeba(folder.parent / "synthetic", min(n, 2000), seed=0)
                        / "img_align_celeba").glob("*.jpg"))
    for i in range(n):
        src, dst = files[i % len(files)], folder / f"{i:06d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())
    return folder


def timed(argv: list[str], kill_after: float | None = None) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "attrnet", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # as a lost machine would: no clean-up
        out, err = proc.communicate()
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"attrnet {' '.join(argv)} failed:\n{err[-3000:]}")
    return time.perf_counter() - t0, out + err, proc.returncode


def rows(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        n = sum(h.endswith("_prob") for h in header)
        return {r[0]: np.asarray(r[1:1 + n], float) for r in reader}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--untrained", default="resnet18:128")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--kill-after-s", type=float, default=30.0)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="attrnet-ray-predict-") as tmp:
        tmp = Path(tmp)
        model = args.model or untrained_model(args.untrained, tmp / "model")
        folder = image_folder(tmp / "images", args.n)
        common = [model, str(folder), "--batch-size", str(args.batch_size), "--faces", "off"]
        plain_s, _, _ = timed(["predict", *common, "--out", str(tmp / "plain.csv")])
        ray_s, _, _ = timed(["predict", *common, "--ray", "--out", str(tmp / "ray.csv")])
        a, b = rows(tmp / "plain.csv"), rows(tmp / "ray.csv")
        same_rows = a.keys() == b.keys()
        max_diff = max(float(np.abs(a[k] - b[k]).max()) for k in a) if same_rows else float("nan")
        killed_s, _, code = timed(["predict", *common, "--ray", "--out", str(tmp / "resumed.csv")], args.kill_after_s)
        parts = len(list((tmp / "resumed.csv.parts").glob("part-*.npz")))
        rerun_s, text, _ = timed(["predict", *common, "--ray", "--out", str(tmp / "resumed.csv")])
        m = re.search(r"(\d+) predicted now, (\d+) finished by an earlier run", text)
        now, before = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
        resumed_same = rows(tmp / "resumed.csv").keys() == b.keys()
    result = {"n": args.n, "model": args.model or f"untrained {args.untrained}", "batch_size": args.batch_size,
              "plain_s": round(plain_s, 1), "plain_images_per_s": round(args.n / plain_s, 1),
              "ray_s": round(ray_s, 1), "ray_images_per_s": round(args.n / ray_s, 1),
              "same_rows": same_rows, "max_prob_diff": max_diff,
              "killed_after_s": round(killed_s, 1), "killed": code == -signal.SIGKILL, "parts_left": parts,
              "rerun_s": round(rerun_s, 1), "rerun_predicted": now, "rerun_found_finished": before,
              "resumed_rows_complete": resumed_same, "cpu_count": os.cpu_count()}
    print(json.dumps(result, indent=1))
    print(f"\n| predict | seconds | images/s |\n|---|---:|---:|\n| plain | {result['plain_s']} | "
          f"{result['plain_images_per_s']} |\n| --ray | {result['ray_s']} | {result['ray_images_per_s']} |\n\n"
          f"killed after {result['killed_after_s']} s with {parts} part files; the rerun predicted {now} and found "
          f"{before} finished ({now + before} of {args.n}) in {result['rerun_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
