"""An exported ONNX graph run by ONNX Runtime on the CPU, with the same predict() as AttributeModel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from attrnet.errors import AttrnetError
from attrnet.inference.predictor import Predictor
from attrnet.inference.sources import ModelInfo


class OnnxAttributeModel(Predictor):
    """The graph takes uint8 images and returns probabilities: preprocessing up to the pixels is attrnet's,
    everything after them is inside the graph (normalisation, the TTA it was exported with)."""

    runtime = "onnx"

    def __init__(self, session, info: ModelInfo, tta: str):
        self.session, self.info, self.tta = session, info, tta
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(cls, source, tta: str | None = None, threads: int = 0) -> "OnnxAttributeModel":
        path = Path(source)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise AttrnetError(f"ONNX model not found: {path} (export one with attrnet export RUN --format onnx)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise AttrnetError("the onnx runtime needs onnxruntime: pip install 'attrnet[export]'") from None
        sidecar = path.with_suffix(".json")
        try:
            obj = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AttrnetError(f"{sidecar}: the exported graph's description is missing or broken ({exc})") from None
        info = ModelInfo.from_json(obj, str(path))
        baked = obj.get("tta", "none")
        if tta is not None and tta != baked:
            raise AttrnetError(f"{path} was exported with --tta {baked}; export again with --tta {tta}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise AttrnetError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        return cls(session, info, baked)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(batch.cpu().numpy().astype(np.uint8, copy=False))
        return self.session.run(None, {self.input_name: x})[0].astype(np.float64, copy=False)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        p = torch.from_numpy(self.probabilities(batch)).clamp(1e-12, 1 - 1e-12)
        return torch.logit(p).float()
