"""AttributeModel: a trained model loaded once, then asked about images.

    model = attrnet.inference.load_model("runs/celeba40")           # run folder, .pt, exported folder, repo id
    result = model.predict(["a.jpg", pil_image, jpeg_bytes])         # paths, PIL images, bytes, uint8 tensors
    result.probabilities, result.decisions, result.attributes        # [N, M] floats, [N, M] 0/1, M names
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from attrnet.device import resolve_device
from attrnet.inference.forward import ProbabilityGraph, batch_logits, make_normalize
from attrnet.inference.preprocess import stack_inputs
from attrnet.inference.sources import ModelInfo, read_model
from attrnet.inference.tta import check_tta


@dataclass
class Prediction:
    """Probabilities and decisions for the images that could be read; `failed` says which could not."""

    attributes: list[str]
    probabilities: np.ndarray          # [N, M] for the readable images, in input order
    decisions: np.ndarray              # [N, M] 0/1: probability >= the attribute's threshold
    thresholds: np.ndarray             # [M]
    indices: list[int]                 # which inputs the N rows are
    failed: list[tuple[int, str]] = field(default_factory=list)  # (input index, why it could not be read)

    def rows(self) -> list[dict]:
        """One dict per readable image: {attribute: {"probability", "threshold", "decision"}}."""
        return [{a: {"probability": float(p), "threshold": float(t), "decision": int(d)}
                 for a, p, t, d in zip(self.attributes, probs, self.thresholds, dec)}
                for probs, dec in zip(self.probabilities, self.decisions)]


class AttributeModel:
    """A trained network with what it needs to read an image (size, colour mode, resize, normalisation),
    its precision and test-time augmentation, and its per-attribute thresholds."""

    runtime = "torch"

    def __init__(self, net: nn.Module, info: ModelInfo, device: torch.device, precision: Any = None,
                 tta: str | None = None):
        from attrnet.precision import Precision

        self.info, self.device = info, device
        self.precision = precision or Precision.resolve("auto", "auto", device)
        self.tta = check_tta(tta if tta is not None else info.tta)
        self.normalize = make_normalize(info.normalization, 1 if info.grayscale else 3).to(device)
        self.net = net.to(device).eval()
        if self.precision.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, source: str | Path, device: str = "auto", tta: str | None = None, precision: str = "auto",
             runtime: str = "torch") -> "AttributeModel":
        """source: a run folder, a checkpoint .pt, an exported folder, an exported .onnx file or a Hub repo id.
        tta: none | flip | flip_shift (None keeps the run's). runtime: torch, or onnx (ONNX Runtime, CPU)."""
        from attrnet.precision import Precision

        if runtime == "onnx" or str(source).endswith(".onnx"):
            from attrnet.inference.onnx_model import OnnxAttributeModel
            return OnnxAttributeModel.load(source, tta=tta)
        if runtime != "torch":
            from attrnet.errors import AttrnetError
            raise AttrnetError(f"unknown runtime {runtime!r}; use torch or onnx")
        dev = resolve_device(device)  # before reading: a missing GPU is reported first
        net, info = read_model(source)
        try:
            chosen = Precision.resolve(precision, "auto", dev, image_hw=info.image_size)
        except ValueError as exc:  # a bad precision name or ATTRNET_CPU_BF16 value
            from attrnet.errors import AttrnetError
            raise AttrnetError(str(exc)) from None
        return cls(net, info, dev, chosen, tta)

    @property
    def attributes(self) -> list[str]:
        return list(self.info.attributes)

    @property
    def thresholds(self) -> np.ndarray:
        return self.info.thresholds

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits [B, M] of a uint8 batch [B, C, H, W] already at the model's size."""
        return batch_logits(self.net, batch.to(self.device, non_blocking=True), self.normalize, self.precision,
                            self.tta)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self.logits(batch)).cpu().numpy()

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        return (probs >= self.info.thresholds).astype(np.int64)

    def predict(self, images: Iterable[Any], batch_size: int = 64) -> Prediction:
        """Probabilities and decisions for images given as paths, bytes, PIL images or uint8 arrays/tensors
        ([C, H, W] at any size); unreadable ones are listed in `failed`, never raised."""
        images = list(images)
        probs, indices, failed = [], [], []
        for start in range(0, len(images), batch_size):
            batch, ok, bad = stack_inputs(images[start:start + batch_size], self.info.image_size,
                                          self.info.grayscale, self.info.resize)
            failed += [(start + i, why) for i, why in bad]
            indices += [start + i for i in ok]
            if ok:
                probs.append(self.probabilities(batch))
        p = np.concatenate(probs) if probs else np.zeros((0, len(self.attributes)))
        return Prediction(self.attributes, p, self.decisions(p), self.thresholds, indices, failed)

    def probability_graph(self, tta: str | None = None) -> nn.Module:
        """uint8 images -> probabilities, normalisation and TTA inside (what export traces), on the CPU."""
        net = self.net.to("cpu").to(memory_format=torch.contiguous_format)
        return ProbabilityGraph(net, self.normalize.to("cpu"), self.tta if tta is None else tta).eval()


def load_model(source: str | Path, device: str = "auto", tta: str | None = None, precision: str = "auto",
               runtime: str = "torch") -> AttributeModel:
    """Load a trained attrnet model once (see AttributeModel.load); then call .predict(images)."""
    return AttributeModel.load(source, device=device, tta=tta, precision=precision, runtime=runtime)
