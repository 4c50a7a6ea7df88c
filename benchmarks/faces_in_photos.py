"""Faces in photos, rebuilt from CelebA's aligned test faces: how well `predict --faces` finds them and how close
its answers stay to the answers on the aligned originals (docs/results.md, "Faces in photos").

The photos: each of the run's test images (its own split of celeba-8k, the images it never trained on), taken back
to CelebA's 178 x 218 aligned frame, is re-posed into an 800 x 600 photo by a similarity transform: eye distance
drawn from 22-70 px, rolled by up to 30 degrees, at a random place, over a background without faces (gradients,
noise and shapes), the frame's border feathered; 1-3 faces per photo, and one photo in ten with none. Where
each face went (the transform that posed it), and its labels, are kept.

Scored: detection recall (a true face is found when a detected face's eye midpoint lies within half the true eye
distance of its own), false faces per photo; on the faces found, the model's mean accuracy against the labels for
(a) attrnet's alignment to the template, (b) the detector's box widened by half, not rotated (what insightface and
FaceXFormer crop), beside (c) the same model on the aligned originals (the files themselves), (d) the whole
photo read as one image (against each face's labels), and (e) each face taken back out of its photo by the exact
inverse of the transform that posed it: what the photo still holds of the face (resampled down to its eye
distance and back), the best any alignment could do. Speed: photos/s and faces/s of predict_faces on 800 x 600
photos with 2 faces, with the share of each stage, in one process, and through `attrnet serve`.

    python benchmarks/faces_in_photos.py RUN --data ../shared/data/celeba-8k --out DIR [--photos 800]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attrnet.config import config_from_dict
from attrnet.data.formats import assign_partition, read_table
from attrnet.data.images import load_image
from attrnet.faces.align import invert_transform, warp_faces
from attrnet.faces.detect import FaceDetector
from attrnet.faces.template import CELEBA_FRAME, CELEBA_TEMPLATE
from attrnet.inference import load_model

TEMPLATE = np.asarray(CELEBA_TEMPLATE)
PHOTO = (600, 800)  # height, width
EYE_DISTANCE = float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))


def background(rng: np.random.Generator) -> np.ndarray:
    """A photo's background without faces: a colour gradient, noise, a few flat shapes."""
    h, w = PHOTO
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    a, b = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    img = a * (1 - xx[..., None]) + b * yy[..., None] + rng.normal(0, 12, (h, w, 3))
    for _ in range(rng.integers(3, 8)):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        img[y0:y0 + rng.integers(20, 200), x0:x0 + rng.integers(20, 200)] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def soft_mask() -> torch.Tensor:
    """The whole aligned frame, its border feathered over 8 px: the face keeps everything its labels describe (an
    ellipse over the face and hair cost 0.006 of mean accuracy on the aligned originals alone, before any
    re-posing: hats, necklaces and neckties lie outside it)."""
    fh, fw = CELEBA_FRAME
    yy, xx = np.mgrid[0:fh, 0:fw] + 0.5
    edge = np.minimum(np.minimum(xx, fw - xx), np.minimum(yy, fh - yy))
    return torch.from_numpy(np.clip(edge / 8, 0, 1)).float()


def pose_transform(x: float, y: float, eye_distance: float, roll: float) -> np.ndarray:
    """The similarity (2 x 3, frame -> photo) that puts the template's eye midpoint at (x, y), eye_distance px
    between the eyes, rolled by roll degrees."""
    a, s = math.radians(roll), eye_distance / EYE_DISTANCE
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.concatenate([rot, (np.array([x, y]) - rot @ TEMPLATE[:2].mean(0))[:, None]], axis=1)


def make_photos(files: list[Path], n_photos: int, seed: int) -> tuple[list[np.ndarray], list]:
    """(photos uint8 [H, W, 3], per photo [(test index, eye midpoint, eye distance)]), re-posing the test faces in
    order: each face appears once."""
    rng = np.random.default_rng(seed)
    mask = soft_mask()
    photos, truth, k = [], [], 0
    for _ in range(n_photos):
        img = torch.from_numpy(background(rng)).permute(2, 0, 1).float()
        faces = []
        count = 0 if rng.random() < 0.1 else int(rng.integers(1, 4))
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            if k >= len(files):
                break
            d, angle = rng.uniform(22, 70), rng.uniform(-30, 30)
            for _ in range(50):  # a place that does not overlap the faces already there
                cx, cy = rng.uniform(0.1, 0.9) * PHOTO[1], rng.uniform(0.1, 0.9) * PHOTO[0]
                if all(math.hypot(cx - x, cy - y) > 3.2 * (d + dd) for x, y, dd in placed):
                    break
            else:
                continue
            placed.append((cx, cy, d))
            T = pose_transform(cx, cy, d, angle)
            crop = load_image(files[k], CELEBA_FRAME)                                       # the aligned original
            layer = warp_faces(crop, [T], PHOTO)[0].float()
            alpha = warp_faces((mask * 255).round().to(torch.uint8)[None], [T], PHOTO)[0].float() / 255
            img = img * (1 - alpha) + layer * alpha
            faces.append((k, [float(cx), float(cy)], float(d), T))
            k += 1
        photos.append(img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
        truth.append(faces)
    return photos, truth


def match(faces: list[dict], truth: list) -> tuple[dict, int]:
    """{true face -> detected face index} and the number of unmatched detections."""
    taken, found = set(), {}
    for t, (k, (cx, cy), d, _) in enumerate(truth):
        best, best_dist = None, 0.5 * d
        for j, f in enumerate(faces):
            ex, ey = np.asarray(f["landmarks"])[:2].mean(0)
            dist = math.hypot(ex - cx, ey - cy)
            if j not in taken and dist < best_dist:
                best, best_dist = j, dist
        if best is not None:
            taken.add(best)
            found[t] = best
    return found, len(faces) - len(taken)


def accuracy(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> float:
    """Mean over attributes of the accuracy on the known labels, decisions at the model's thresholds."""
    pred = probs >= thresholds
    known = ~np.isnan(labels)
    return float(np.mean([(pred[known[:, j], j] == (labels[known[:, j], j] == 1)).mean()
                          for j in range(labels.shape[1])]))


def speed(model, detector: FaceDetector, jpegs: list[bytes], batch: int) -> dict:
    """predict_faces end to end (JPEG bytes in) on photos with 2 faces each: photos/s, faces/s, each stage's
    share; the first batch is a warm-up."""
    model.predict_faces(jpegs[:batch], detector=detector)
    seconds = dict.fromkeys(("decode", "detect", "align", "model"), 0.0)
    faces, t0 = 0, time.perf_counter()
    for start in range(0, len(jpegs), batch):
        res = model.predict_faces(jpegs[start:start + batch], detector=detector)
        faces += res.n_faces
        for stage, s in res.seconds.items():
            seconds[stage] += s
    wall = time.perf_counter() - t0
    total = sum(seconds.values())
    return {"photos": len(jpegs), "faces": faces, "seconds": round(wall, 2),
            "photos_per_s": round(len(jpegs) / wall, 2), "faces_per_s": round(faces / wall, 2),
            "share": {k: round(v / total, 3) for k, v in seconds.items()}}


def served_speed(model, jpegs: list[bytes], clients: int) -> dict:
    """The same photos through `attrnet serve`'s app (uvicorn on 127.0.0.1, one photo per request) from `clients`
    concurrent clients: photos/s and faces/s as a client sees them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import uvicorn

    from attrnet.serve.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/predict"
    try:
        with httpx.Client(timeout=120) as client:
            client.post(url, files={"file": ("warm.jpg", jpegs[0])})
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                bodies = list(pool.map(lambda b: client.post(url, files={"file": ("p.jpg", b)}).json(), jpegs))
            wall = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(10)
    faces = sum(len(b["results"][0]["faces"]) for b in bodies)
    return {"clients": clients, "photos": len(jpegs), "faces": faces, "seconds": round(wall, 2),
            "photos_per_s": round(len(jpegs) / wall, 2), "faces_per_s": round(faces / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True, help="the run's CelebA folder (its test split is used)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--photos", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16, help="photos per predict_faces call")
    ap.add_argument("--speed-photos", type=int, default=48, help="photos with 2 faces timed for speed")
    ap.add_argument("--min-face", type=int, default=None,
                    help="the detector's smallest face in px (default: FaceDetector's, as predict uses)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.run, "cpu")
    cfg = config_from_dict(model.info.config)
    table = read_table(dataclasses.replace(cfg.data, root=args.data)).select(model.attributes)
    part = assign_partition(table, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    test = np.flatnonzero(part == 2)
    files = [table.paths[i] for i in test]
    labels = table.labels[test]
    detector = FaceDetector("cpu", **({"min_face": args.min_face} if args.min_face else {}))
    t0 = time.perf_counter()
    photos, truth = make_photos(files, args.photos, args.seed)
    build_s = time.perf_counter() - t0

    originals = model.predict(files).probabilities  # (c): the aligned originals
    rows = {"template": [], "box": [], "original": [], "exact": [], "whole": []}
    recall_n = found_n = false_faces = 0
    missed, false_scores = [], []
    seconds = dict.fromkeys(("decode", "detect", "align", "model"), 0.0)
    for start in range(0, len(photos), args.batch):
        batch = photos[start:start + args.batch]
        res = {a: model.predict_faces(batch, align=a, detector=detector) for a in ("template", "box")}
        for stage, s in res["template"].seconds.items():
            seconds[stage] += s
        whole = model.predict(batch).probabilities
        for p, faces_t, faces_b, gt, w in zip(range(len(batch)), res["template"].faces, res["box"].faces,
                                              truth[start:start + args.batch], whole):
            found, extra = match(faces_t, gt)
            found_b, _ = match(faces_b, gt)
            false_faces += extra
            false_scores += [f["score"] for j, f in enumerate(faces_t) if j not in found.values()]
            recall_n += len(gt)
            found_n += len(found)
            missed += [{"eye_distance": round(d, 1), "roll": round(math.degrees(math.atan2(T[1, 0], T[0, 0])), 1)}
                       for t, (_, _, d, T) in enumerate(gt) if t not in found]
            both = [t for t in found if t in found_b]
            exact = warp_faces(torch.from_numpy(batch[p]).permute(2, 0, 1),
                               [invert_transform(gt[t][3]) for t in both], CELEBA_FRAME)
            exact_probs = model.predict([x.permute(1, 2, 0).numpy() for x in exact]).probabilities if both else []
            for t, e in zip(both, exact_probs):
                k = gt[t][0]
                rows["template"].append((k, faces_t[found[t]]["probabilities"]))
                rows["box"].append((k, faces_b[found_b[t]]["probabilities"]))
                rows["original"].append((k, originals[k]))
                rows["exact"].append((k, e))
            for k, *_ in gt:
                rows["whole"].append((k, w))
    result = {"run": args.run, "min_face": detector.min_face, "photos": len(photos), "faces": recall_n,
              "found": found_n, "recall": found_n / max(1, recall_n),
              "false_faces_per_photo": false_faces / len(photos), "build_seconds": round(build_s, 1),
              "predict_faces_seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for name, items in rows.items():
        if items:
            ks = [k for k, _ in items]
            result[f"accuracy_{name}"] = accuracy(np.stack([p for _, p in items]), labels[ks], model.thresholds)
            result[f"n_{name}"] = len(items)
    result["accuracy_gap_template_vs_original"] = result.get("accuracy_template", float("nan")) - \
        result.get("accuracy_original", float("nan"))
    result["accuracy_gap_template_vs_exact"] = result.get("accuracy_template", float("nan")) - \
        result.get("accuracy_exact", float("nan"))
    result["missed"] = missed
    result["false_face_scores"] = [round(float(x), 4) for x in sorted(false_scores)]
    two = [i for i, gt in enumerate(truth) if len(gt) == 2][:args.speed_photos]
    jpegs = []
    for i in two:
        buf = io.BytesIO()
        Image.fromarray(photos[i]).save(buf, "JPEG", quality=92)
        jpegs.append(buf.getvalue())
    result["speed"] = speed(model, detector, jpegs, 8)
    result["served"] = [served_speed(model, jpegs, c) for c in (1, 4)]
    (out / "faces_in_photos.json").write_text(json.dumps(result, indent=1) + "\n")
    for i in range(3):
        Image.fromarray(photos[i]).save(out / f"photo{i}.jpg", quality=90)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
