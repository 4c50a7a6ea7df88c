"""Inference: from a saved model to probabilities and decisions, with no training code.

Reading a run folder, a checkpoint, an exported folder or an ONNX file; preprocessing as in training;
precision; test-time augmentation as a reduction outside the network; thresholds. Validation inside
training, `evaluate`, `predict`, `export` and `serve` all go through here, so they agree.
"""

from attrnet.inference.model import AttributeModel, Prediction, load_model

__all__ = ["AttributeModel", "Prediction", "load_model"]
