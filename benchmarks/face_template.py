"""The face template attrnet aligns photos to (attrnet.faces.template): the mean of MTCNN's 5 landmarks over
CelebA's aligned images, in their 178 x 218 frame.

celeba-8k holds the aligned images at half size (89 x 109); each is resized back to 178 x 218 (antialiased
bilinear, attrnet's resize) before detection, so the landmarks are in the frame the template is used in. The
largest face of each image counts; images where none is found are counted and left out.

    python benchmarks/face_template.py ../shared/data/celeba-8k [--out template.json]

Prints one JSON object: the template (x, y per landmark), each landmark's standard deviation over the images,
how many images had a face, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from attrnet.data.images import load_image
from attrnet.faces.detect import LANDMARKS, FaceDetector
from attrnet.faces.template import CELEBA_FRAME


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="a CelebA aligned folder: img_align_celeba/*.jpg")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="the first N images only (0: all)")
    args = ap.parse_args()
    files = sorted((Path(args.root) / "img_align_celeba").glob("*.jpg"))
    files = files[:args.limit] if args.limit else files
    detector = FaceDetector("cpu")
    t0 = time.perf_counter()
    points, missing = [], 0
    for start in range(0, len(files), args.batch):
        batch = [load_image(f, CELEBA_FRAME) for f in files[start:start + args.batch]]
        for faces in detector.detect(batch):
            if faces:
                points.append(faces[0].landmarks)
            else:
                missing += 1
    pts = np.stack(points)
    out = {"frame": list(CELEBA_FRAME), "images": len(files), "with_face": len(points), "without_face": missing,
           "template": {name: [round(float(x), 2), round(float(y), 2)] for name, (x, y) in zip(LANDMARKS, pts.mean(0))},
           "sd": {name: [round(float(x), 2), round(float(y), 2)] for name, (x, y) in zip(LANDMARKS, pts.std(0))},
           "seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()}
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
