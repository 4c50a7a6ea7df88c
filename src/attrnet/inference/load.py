"""load_model: a trained model from wherever it is, in the runtime asked for (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

from attrnet.errors import AttrnetError
from attrnet.inference.model import AttributeModel
from attrnet.inference.onnx_model import OnnxAttributeModel
from attrnet.inference.predictor import Predictor

RUNTIMES = ("torch", "onnx")


def load_model(source: str | Path, device: str = "auto", tta: str | None = None, precision: str = "auto",
               runtime: str = "torch") -> Predictor:
    """Load a trained attrnet model once, then call .predict(images).

    source: a run folder, a checkpoint .pt, an exported folder, an exported .onnx file or a Hub repo id.
    runtime: torch (AttributeModel), or onnx (OnnxAttributeModel: ONNX Runtime on the CPU; a .onnx source
    always is). tta: none | flip | flip_shift (None keeps the model's own). precision (torch): auto | bf16 | fp32.
    """
    if runtime not in RUNTIMES:
        raise AttrnetError(f"unknown runtime {runtime!r}; use {' or '.join(RUNTIMES)}")
    if runtime == "onnx" or str(source).endswith(".onnx"):
        if precision not in ("auto", "fp32"):
            raise AttrnetError(f"precision {precision}: an exported ONNX graph computes in fp32 (use the run folder "
                               f"with the torch runtime for bf16)")
        return OnnxAttributeModel.load(source, tta=tta)
    return AttributeModel.load(source, device=device, tta=tta, precision=precision)
