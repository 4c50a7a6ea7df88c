"""Where the faces-in-photos accuracy gap comes from, without a detector: a run's aligned CelebA test faces taken
through each step of benchmarks/faces_in_photos.py's re-posing, and scored (mean accuracy over the attributes, at
the model's thresholds) at each step (docs/results.md, "Faces in photos"):

    original              the aligned files themselves
    mask                  the face composited over a background without faces through the re-posing's mask
    resolution            down to an eye distance of 22-70 px (in an 800 x 600 photo) and back, by the exact
                          transform (no rotation)
    resolution_roll       the same, rolled by up to 30 degrees
    mask_resolution_roll  all three: what the photo holds of each face, the best any alignment can recover

    python benchmarks/faces_gap.py RUN --data ../shared/data/celeba-8k [--mask frame|ellipse]

--mask ellipse is the mask the benchmark used first (an ellipse over the face and hair); frame is today's (the
whole aligned frame, its border feathered).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch
from faces_in_photos import PHOTO, accuracy, background, pose_transform, soft_mask

from attrnet.config import config_from_dict
from attrnet.data.formats import assign_partition, read_table
from attrnet.data.images import load_image
from attrnet.faces.align import invert_transform, warp_faces
from attrnet.faces.template import CELEBA_FRAME
from attrnet.inference import load_model


def ellipse_mask() -> torch.Tensor:
    """The benchmark's first mask: an ellipse over the face and hair of the aligned frame, edge blurred ~12 px."""
    fh, fw = CELEBA_FRAME
    yy, xx = np.mgrid[0:fh, 0:fw] + 0.5
    r = np.sqrt(((xx - fw / 2) / (fw * 0.48)) ** 2 + ((yy - fh * 0.5) / (fh * 0.5)) ** 2)
    return torch.from_numpy(np.clip((1 - r) / 0.1, 0, 1)).float()


def repose_and_back(face: torch.Tensor, eye_distance: float, roll: float) -> torch.Tensor:
    """face (uint8 [3, 218, 178]) posed into an 800 x 600 photo at eye_distance px, rolled by roll degrees, and
    taken back into the aligned frame by the exact inverse transform."""
    T = pose_transform(400.0, 300.0, eye_distance, roll)
    photo = warp_faces(face, [T], PHOTO)[0]
    return warp_faces(photo, [invert_transform(T)], CELEBA_FRAME)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True, help="the run's CelebA folder (its test split is used)")
    ap.add_argument("--mask", choices=("frame", "ellipse"), default="frame")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = load_model(args.run, "cpu")
    cfg = config_from_dict(model.info.config)
    table = read_table(dataclasses.replace(cfg.data, root=args.data)).select(model.attributes)
    part = assign_partition(table, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    test = np.flatnonzero(part == 2)
    labels = table.labels[test]
    rng = np.random.default_rng(args.seed)
    mask = soft_mask() if args.mask == "frame" else ellipse_mask()
    steps: dict[str, list[torch.Tensor]] = {k: [] for k in ("original", "mask", "resolution", "resolution_roll",
                                                            "mask_resolution_roll")}
    for i in test:
        face = load_image(table.paths[i], CELEBA_FRAME)
        bg = torch.from_numpy(background(rng)[:CELEBA_FRAME[0], :CELEBA_FRAME[1]]).permute(2, 0, 1).float()
        masked = (face.float() * mask + bg * (1 - mask)).round().to(torch.uint8)
        d, roll = rng.uniform(22, 70), rng.uniform(-30, 30)
        steps["original"].append(face)
        steps["mask"].append(masked)
        steps["resolution"].append(repose_and_back(face, d, 0.0))
        steps["resolution_roll"].append(repose_and_back(face, d, roll))
        steps["mask_resolution_roll"].append(repose_and_back(masked, d, roll))
    result = {"run": args.run, "mask_kind": args.mask, "faces": len(test)}
    for name, faces in steps.items():
        probs = model.predict([f.permute(1, 2, 0).numpy() for f in faces]).probabilities
        result[name] = round(accuracy(probs, labels, model.thresholds), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
