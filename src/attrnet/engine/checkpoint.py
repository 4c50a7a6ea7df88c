"""Writing checkpoints: one dict with everything needed to resume a run or rebuild its model.

Saved through attrnet.model_file (tensors, numbers, strings, lists and dicts only), so that reading one,
which attrnet.inference.checkpoint does for training, evaluation and prediction alike, never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrnet import model_file
from attrnet.inference.checkpoint import (CHECKPOINT_VERSION, KIND_ATTRIBUTE_NET, KIND_LATENT_TASK,  # noqa: F401
                                          LOADED_ONLY, inference_state, load_checkpoint, load_weights,
                                          network_from_checkpoint, resolve_checkpoint)


# Kept in checkpoints/last.pt only: the optimizer's moments are twice the model's size and no one predicts with them.
RESUME_ONLY = ("optimizer", "scheduler", "weighting", "swa_weights", "swa_count")


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Write atomically (temp file, then rename): a run killed mid-write leaves the old file intact."""
    state.setdefault("kind", KIND_ATTRIBUTE_NET)
    model_file.save_file(path, {**state, "version": CHECKPOINT_VERSION})
