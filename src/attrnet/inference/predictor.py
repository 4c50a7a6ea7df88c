"""What every runtime of a trained model offers (PyTorch: attrnet.inference.model, ONNX Runtime:
attrnet.inference.onnx_model): a description of the model (ModelInfo) and probabilities of a uint8 batch; and
on top of that, the same for any runtime, predict(): images as a caller has them -> probabilities and decisions.

    result = model.predict(["a.jpg", jpeg_bytes, pil_image, array])   # or one image: model.predict("a.jpg")
    result.probabilities   # [N, M], row i for input i; NaN in the rows of inputs that could not be read
    result.decisions       # [N, M] 1 / 0 (probability >= the attribute's threshold); -1 where unreadable
    result.failed          # [(input index, why)] of the unreadable inputs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from attrnet.errors import AttrnetError
from attrnet.inference.faces import FacePrediction, predict_faces
from attrnet.inference.preprocess import stack_inputs
from attrnet.inference.sources import ModelInfo

UNREADABLE = -1  # the decision of an input that could not be read


@dataclass
class Prediction:
    """One row per input, in input order: probabilities and decisions; `failed` says which inputs could not be
    read (their rows are NaN probabilities and UNREADABLE decisions)."""

    attributes: list[str]
    probabilities: np.ndarray          # [N, M] floats; NaN rows for unreadable inputs
    decisions: np.ndarray              # [N, M] int: 1, 0, or UNREADABLE (-1) for unreadable inputs
    thresholds: np.ndarray             # [M]
    failed: list[tuple[int, str]] = field(default_factory=list)  # (input index, why it could not be read)

    @property
    def ok(self) -> np.ndarray:
        """[N] bool: which inputs were read."""
        mask = np.ones(len(self.probabilities), dtype=bool)
        mask[[i for i, _ in self.failed]] = False
        return mask

    @property
    def indices(self) -> list[int]:
        """The inputs that were read (the rows without NaN)."""
        return [int(i) for i in np.flatnonzero(self.ok)]

    def rows(self) -> list[dict | None]:
        """Per input: {attribute: {"probability", "threshold", "decision"}}, or None for an unreadable one."""
        failed = {i for i, _ in self.failed}
        return [None if i in failed else
                {a: {"probability": float(p), "threshold": float(t), "decision": int(d)}
                 for a, p, t, d in zip(self.attributes, probs, self.thresholds, dec)}
                for i, (probs, dec) in enumerate(zip(self.probabilities, self.decisions))]


def as_image_list(images: Any) -> list:
    """predict()'s input as a list: one image (a path, bytes, a PIL image, an array or tensor) becomes a list of
    one, so that a string is never read as a sequence of one-letter file names."""
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray, torch.Tensor)):
        return [images]
    if type(images).__module__.startswith("PIL.") and hasattr(images, "getbands"):
        return [images]
    try:
        return list(images)
    except TypeError:
        raise TypeError(f"predict() takes an image (a path, bytes, a PIL image or a uint8 array) or a list of them, "
                        f"not a {type(images).__name__}") from None


class Predictor:
    """A trained model in some runtime: `info` (what it predicts and how it reads an image), its test-time
    augmentation `tta`, and probabilities() of a uint8 batch at the model's size. Subclasses supply those."""

    runtime = "none"
    info: ModelInfo
    tta: str
    device = torch.device("cpu")

    @property
    def attributes(self) -> list[str]:
        return list(self.info.attributes)

    @property
    def thresholds(self) -> np.ndarray:
        return self.info.thresholds

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """float [B, M] probabilities of a uint8 batch [B, C, H, W] already at the model's size."""
        raise NotImplementedError

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        return (probs >= self.info.thresholds).astype(np.int64)

    def predict(self, images: Iterable[Any] | Any, batch_size: int = 64) -> Prediction:
        """Probabilities and decisions, one row per input in input order, for images given as paths, bytes, PIL
        images or uint8 arrays/tensors ([C, H, W] or [H, W, C], any size, grey, RGB or RGBA), or one such image.
        Unreadable inputs are listed in `failed` with the reason, and their rows are NaN, never raised."""
        images = as_image_list(images)
        m = len(self.attributes)
        probs = np.full((len(images), m), np.nan)
        failed: list[tuple[int, str]] = []
        pre = self.info
        for start in range(0, len(images), batch_size):
            batch, ok, bad = stack_inputs(images[start:start + batch_size], pre.image_size, pre.grayscale, pre.resize)
            failed += [(start + i, why) for i, why in bad]
            if ok:
                probs[[start + i for i in ok]] = self.probabilities(batch)
        decisions = np.full(probs.shape, UNREADABLE, dtype=np.int64)
        read = np.ones(len(images), dtype=bool)
        read[[i for i, _ in failed]] = False
        decisions[read] = self.decisions(probs[read])
        return Prediction(self.attributes, probs, decisions, self.thresholds, failed)

    def predict_faces(self, images: Iterable[Any] | Any, batch_size: int = 64, detector: Any = None,
                      align: str = "template") -> FacePrediction:
        """Each photo's faces, largest first, with probabilities and decisions per face: for a model trained on
        aligned faces (info.preprocessing.input == "aligned_face"). Every face is found with its 5 landmarks,
        aligned to the model's template by a similarity transform (align="box": the detector's box widened by
        half, not rotated: the baseline other tools use) and read as training read its faces; the faces of all
        the photos go through the network in batches. A photo without a face has an empty list; an unreadable
        one is in `failed`. detector: an attrnet.faces.detect.FaceDetector (default: one on the model's device,
        made once)."""
        if self.info.preprocessing.input != "aligned_face" or not self.info.preprocessing.face_template:
            raise AttrnetError(f"{self.info.source or 'this model'} was trained on whole images, not on aligned "
                               f"faces: predict the images whole (predict, or --faces off)")
        if detector is None:
            detector = getattr(self, "_face_detector", None)
            if detector is None:
                from attrnet.faces.detect import FaceDetector  # the faces extra, imported only when it is used
                detector = self._face_detector = FaceDetector(self.device)
        return predict_faces(self, as_image_list(images), detector, batch_size, align)
