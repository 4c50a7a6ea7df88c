"""AttributeModel: a trained network run by PyTorch, loaded once, then asked about images.

    model = attrnet.inference.load_model("runs/celeba40")           # run folder, .pt, exported folder, repo id
    result = model.predict(["a.jpg", pil_image, jpeg_bytes])         # paths, PIL images, bytes, uint8 arrays
    result.probabilities, result.decisions, result.attributes        # [N, M] floats, [N, M] 0/1, M names

predict() and the rest of the interface are the Predictor's (attrnet.inference.predictor), shared with the ONNX
Runtime model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from attrnet.device import resolve_device
from attrnet.errors import AttrnetError
from attrnet.inference.forward import ProbabilityGraph, batch_logits, make_normalize
from attrnet.inference.predictor import Prediction, Predictor
from attrnet.inference.sources import ModelInfo, read_model
from attrnet.inference.tta import check_tta
from attrnet.precision import Precision

__all__ = ["AttributeModel", "Prediction"]
log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device, info: ModelInfo) -> Precision:
    """auto | bf16 | fp32 for this device and model (attrnet.precision's rule), the choice logged."""
    try:
        chosen = Precision.resolve(precision, "auto", device, image_hw=info.image_size)
    except ValueError as exc:  # a bad precision name or ATTRNET_CPU_BF16 value
        raise AttrnetError(str(exc)) from None
    log.info("model %s on %s: %s (%s)", info.source, device, chosen.describe(), chosen.reason)
    return chosen


class AttributeModel(Predictor):
    """A trained network with what it needs to read an image (size, colour mode, resize, normalisation),
    its precision and test-time augmentation, and its per-attribute thresholds."""

    runtime = "torch"

    def __init__(self, net: nn.Module, info: ModelInfo, device: torch.device, precision: Precision | None = None,
                 tta: str | None = None):
        self.info, self.device = info, device
        self.precision = precision or Precision.resolve("auto", "auto", device)
        self.tta = check_tta(tta if tta is not None else info.tta)
        self.normalize = make_normalize(info.normalization, 1 if info.grayscale else 3).to(device)
        self.net = net.to(device).eval()
        if self.precision.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, source: str | Path, device: str = "auto", tta: str | None = None,
             precision: str = "auto") -> "AttributeModel":
        """source: a run folder, a checkpoint .pt, an exported folder or a Hub repo id.
        tta: none | flip | flip_shift (None keeps the run's). precision: auto | bf16 | fp32."""
        dev = resolve_device(device)  # before reading: a missing GPU is reported first
        net, info = read_model(source)
        return cls(net, info, dev, resolve_precision(precision, dev, info), tta)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits [B, M] of a uint8 batch [B, C, H, W] already at the model's size."""
        return batch_logits(self.net, batch.to(self.device, non_blocking=True), self.normalize, self.precision,
                            self.tta)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self.logits(batch)).cpu().numpy()

    def probability_graph(self, tta: str | None = None) -> nn.Module:
        """uint8 images -> probabilities, normalisation and TTA inside (what export traces), on the CPU."""
        net = self.net.to("cpu").to(memory_format=torch.contiguous_format)
        return ProbabilityGraph(net, self.normalize.to("cpu"), self.tta if tta is None else tta).eval()
