"""Finding faces and their 5 landmarks in photos: MTCNN from facenet-pytorch (weights inside its wheel: works
offline), pip install 'attrnet[faces]'.

Photos of one size go through the detector together (MTCNN batches equal sizes only), so a folder of camera
photos is a few calls. A photo larger than max_side on its long side is shrunk (antialiased) for the detector
only, and the boxes and landmarks scaled back: the smallest face the detector is asked for (min_face px at
the detector's scale) bounds how far that can go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)
# MTCNN's three stages' thresholds (facenet-pytorch's defaults) and the smallest face it looks for
THRESHOLDS = (0.6, 0.7, 0.7)
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # as seen in the image


@dataclass
class Face:
    """One face: box (x1, y1, x2, y2), the detector's score, 5 landmarks [[x, y], ...] (LANDMARKS' order),
    image coordinates in pixels."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def require_facenet():
    """facenet_pytorch's MTCNN class, or the one line saying which extra installs it."""
    try:
        from facenet_pytorch import MTCNN  # optional: the faces extra
    except ImportError:
        raise AttrnetError("finding faces needs facenet-pytorch: pip install 'attrnet[faces]'") from None
    return MTCNN


class FaceDetector:
    """MTCNN on `device`. min_face: the smallest face looked for, in pixels at the detector's scale (MTCNN's
    min_face_size: larger is faster). 40 rather than MTCNN's 20: a face of 40 px is already blown up 4 times to
    CelebA's frame, and on 800 x 600 photos with faces of 22-70 px between the eyes it found more of them (recall
    0.995 against 0.990, false faces 0.01 against 0.03 a photo) in 0.4 of the detector's time
    (benchmarks/faces_in_photos.py, docs/results.md). max_side: photos above it are shrunk for detection;
    min_score: faces the detector scores lower are dropped."""

    def __init__(self, device: torch.device | str = "cpu", min_face: int = 40, max_side: int = 1600,
                 min_score: float = 0.9):
        mtcnn = require_facenet()
        self.device = torch.device(device)
        self.min_face, self.max_side, self.min_score = min_face, max_side, min_score
        self.mtcnn = mtcnn(min_face_size=min_face, thresholds=list(THRESHOLDS), keep_all=True,
                           device=self.device, post_process=False)
        # channels_last: MTCNN's max-pooling and convolutions over the image pyramid ran 1.4x faster on the 2-core
        # CPU (8 photos of 800 x 600: 0.61 s against 0.84 s), the boxes and landmarks the same to 1e-4 px
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: list[torch.Tensor]) -> list[list[Face]]:
        """Faces of each uint8 image [3, H, W], largest first: one list per image (empty where there is none)."""
        out: list[list[Face]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
        for (h, w), members in by_size.items():
            scale = min(1.0, self.max_side / max(h, w))
            size = [max(1, round(h * scale)), max(1, round(w * scale))]
            batch = torch.stack([images[i] for i in members])
            if scale < 1.0:
                batch = TF.resize(batch, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            hwc = batch.permute(0, 2, 3, 1).to(self.device).float()
            with torch.no_grad():
                boxes, scores, points = self.mtcnn.detect(hwc, landmarks=True)
            fy, fx = h / size[0], w / size[1]  # detector pixels back to the photo's
            for i, b, s, p in zip(members, boxes, scores, points):
                out[i] = _faces(b, s, p, fx, fy, self.min_score)
        return out


def _faces(boxes, scores, points, fx: float, fy: float, min_score: float) -> list[Face]:
    if boxes is None:
        return []
    factor = np.array([fx, fy], np.float64)
    faces = [Face(np.asarray(b, np.float64) * np.tile(factor, 2), float(s), np.asarray(p, np.float64) * factor)
             for b, s, p in zip(boxes, scores, points) if s is not None and s >= min_score]
    return sorted(faces, key=lambda f: -f.area)
