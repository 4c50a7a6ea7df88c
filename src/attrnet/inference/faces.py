"""A face model on ordinary photos: find the faces, align each to the model's template, read it as training read
its faces, and run the faces of all the photos through the network together (Predictor.predict_faces).

Stages, timed (FacePrediction.seconds): decode (the photos to upright RGB pixels), detect (MTCNN), align (the
similarity transform, the warp into the template's frame, the model's own resize), model (the network, in
batches across photos).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attrnet.data.images import resize_image
from attrnet.errors import AttrnetError
from attrnet.faces.align import similarity_transform, warp_faces
from attrnet.inference.preprocess import convert_channels, to_pixels

ALIGNMENTS = ("template", "box")
BOX_WIDENING = 1.5  # align="box": the detector's box widened by half, as insightface and FaceXFormer crop


@dataclass
class FacePrediction:
    """faces[i]: photo i's faces, largest first, each {"box": [x1, y1, x2, y2], "score", "landmarks": [[x, y] x 5],
    "probabilities": [M] floats, "decisions": [M] 0/1}; failed: (input index, why) of unreadable photos."""

    attributes: list[str]
    thresholds: np.ndarray
    faces: list[list[dict]]
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def n_faces(self) -> int:
        return sum(len(f) for f in self.faces)

    @property
    def without_face(self) -> list[int]:
        """Inputs that were read but hold no face."""
        failed = {i for i, _ in self.failed}
        return [i for i, faces in enumerate(self.faces) if not faces and i not in failed]


def face_transforms(landmarks: list[np.ndarray], template: np.ndarray) -> list[np.ndarray]:
    """Each face's image -> template-frame similarity, from its 5 landmarks."""
    return [similarity_transform(points, template) for points in landmarks]


def box_transforms(boxes: list[np.ndarray], frame: tuple[int, int]) -> list[np.ndarray]:
    """align="box": the box widened by BOX_WIDENING about its centre, scaled (x and y alike, to fit the frame's
    height) into the frame, centred, not rotated."""
    fh, fw = frame
    out = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        side = BOX_WIDENING * max(x2 - x1, y2 - y1)
        s = fh / side
        out.append(np.array([[s, 0, fw / 2 - s * cx], [0, s, fh / 2 - s * cy]], np.float64))
    return out


def model_crops(pixels: torch.Tensor, faces: list, pre, align: str = "template") -> list[torch.Tensor]:
    """The faces of one photo (uint8 [3, H, W]) as the model reads its images: aligned into the template's frame
    (align="template"; "box": the widened box, not rotated), then the model's own colour mode and resize."""
    if not faces:
        return []
    if align == "template":
        transforms = face_transforms([f.landmarks for f in faces], np.asarray(pre.face_template, np.float64))
    else:
        transforms = box_transforms([f.box for f in faces], pre.face_frame)
    return [resize_image(convert_channels(crop, pre.grayscale), pre.image_size, pre.resize)
            for crop in warp_faces(pixels, transforms, pre.face_frame)]


def face_json(face, probabilities: np.ndarray, decisions: np.ndarray) -> dict:
    """One face as predict_faces gives it (and the server, with its attributes added)."""
    return {"box": [float(v) for v in face.box], "score": face.score, "landmarks": face.landmarks.tolist(),
            "probabilities": probabilities, "decisions": decisions}


def predict_faces(model, images: list, detector, batch_size: int = 64, align: str = "template") -> FacePrediction:
    """Predictor.predict_faces' work (see there)."""
    if align not in ALIGNMENTS:
        raise AttrnetError(f"unknown face alignment {align!r}; valid: {', '.join(ALIGNMENTS)}")
    pre = model.info.preprocessing
    seconds = dict.fromkeys(("decode", "detect", "align", "model"), 0.0)
    t0 = time.perf_counter()
    pixels, failed = [], []
    for i, image in enumerate(images):
        try:
            pixels.append(to_pixels(image, grayscale=False, name=f"input {i}"))
        except AttrnetError as exc:
            pixels.append(None)
            failed.append((i, str(exc)))
    seconds["decode"] = time.perf_counter() - t0
    readable = [i for i, p in enumerate(pixels) if p is not None]
    t0 = time.perf_counter()
    found = dict(zip(readable, detector.detect([pixels[i] for i in readable]))) if readable else {}
    seconds["detect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    crops, owners = [], []
    for i, faces in found.items():
        for j, crop in enumerate(model_crops(pixels[i], faces, pre, align)):
            crops.append(crop)
            owners.append((i, j))
    seconds["align"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = np.zeros((0, len(model.attributes)))
    if crops:
        probs = np.concatenate([model.probabilities(torch.stack(crops[s:s + batch_size]))
                                for s in range(0, len(crops), batch_size)])
    seconds["model"] = time.perf_counter() - t0
    decisions = model.decisions(probs)
    out: list[list[dict]] = [[] for _ in images]
    for (i, j), p, d in zip(owners, probs, decisions):
        out[i].append(face_json(found[i][j], p, d))
    return FacePrediction(list(model.attributes), model.thresholds, out, failed, seconds)


def face_rows(result: FacePrediction, names: list[str]) -> list[dict[str, Any]]:
    """One flat row per face, photos in input order and faces largest first: image (input index), face,
    x1, y1, x2, y2, face_score, then each attribute's probability and decision."""
    rows = []
    for i, faces in enumerate(result.faces):
        for j, f in enumerate(faces):
            row: dict[str, Any] = {"image": i, "face": j, "x1": f["box"][0], "y1": f["box"][1], "x2": f["box"][2],
                                   "y2": f["box"][3], "face_score": f["score"]}
            row.update({f"{a}_prob": float(p) for a, p in zip(names, f["probabilities"])})
            row.update({a: int(d) for a, d in zip(names, f["decisions"])})
            rows.append(row)
    return rows
