"""Inference: from a saved model to probabilities and decisions, with no training code.

Reading a run folder, a checkpoint, an exported folder or an ONNX file; preprocessing as in training;
precision; test-time augmentation as a reduction outside the network; thresholds. Validation inside
training, `evaluate`, `predict`, `export` and `serve` all go through here, so they agree.
"""

from attrnet.inference.load import load_model
from attrnet.inference.model import AttributeModel
from attrnet.inference.onnx_model import OnnxAttributeModel
from attrnet.inference.predictor import Prediction, Predictor

__all__ = ["AttributeModel", "OnnxAttributeModel", "Prediction", "Predictor", "load_model"]
