"""Checkpoints: one dict with everything needed to resume a run or rebuild its predictor.

Saved and loaded through attrnet.model_file: tensors, numbers, strings, lists and dicts only, read with
weights_only=True, so opening a checkpoint never runs code. `kind` says which network the file holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from attrnet import model_file
from attrnet.errors import AttrnetError

CHECKPOINT_VERSION = 2          # 2: weights-only (plain types), with `kind`
KIND_ATTRIBUTE_NET = "attribute_net"  # attrnet.models.build.AttributeNet (checkpoints/best.pt, last.pt)
KIND_LATENT_TASK = "latent_task"      # the paper's model on CNN features (mtl_model.pt)
KINDS = (KIND_ATTRIBUTE_NET, KIND_LATENT_TASK)
LOADED_ONLY = ("version", "path", "run_dir")  # added by load_checkpoint, not stored


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Write atomically (temp file, then rename): a run killed mid-write leaves the old file intact."""
    state.setdefault("kind", KIND_ATTRIBUTE_NET)
    model_file.save_file(path, {**state, "version": CHECKPOINT_VERSION})


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file, or the best checkpoint of a run folder (never running code from the file)."""
    path = resolve_checkpoint(path)
    ckpt = model_file.load_file(path, "attrnet checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("attributes"), list):
        raise AttrnetError(f"{path}: not an attrnet checkpoint (no attribute list)")
    kind = ckpt.get("kind") or (KIND_LATENT_TASK if "L" in ckpt else KIND_ATTRIBUTE_NET)  # version 1 had no kind
    if kind not in KINDS:
        raise AttrnetError(f"{path}: unknown kind of model {kind!r}; this attrnet reads {', '.join(KINDS)}")
    if kind == KIND_ATTRIBUTE_NET and not isinstance(ckpt.get("model"), dict):
        raise AttrnetError(f"{path}: not an attrnet checkpoint (no model weights)")
    ckpt["kind"] = kind
    if kind == KIND_LATENT_TASK:  # the paper's model (mtl_model.pt): its feature CNN(s) live beside it
        ckpt["run_dir"] = str(path.parent)
    ckpt["path"] = str(path)
    return ckpt


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "mtl_model.pt", path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.is_file():
                return candidate
        if (path / "checkpoints" / "last.pt").is_file():
            raise AttrnetError(f"{path}: no checkpoints/best.pt yet (the run has not finished an epoch with a "
                               f"validation score); give checkpoints/last.pt to use the latest weights")
        raise AttrnetError(f"{path}: no checkpoints/best.pt (or mtl_model.pt) in this run folder")
    if not path.is_file():
        raise AttrnetError(f"checkpoint not found: {path}")
    return path


def inference_state(ckpt: dict) -> dict:
    """The weights to predict with: the EMA average when the run kept one, else the trained weights."""
    return ckpt.get("ema") or ckpt["model"]


def load_weights(module: nn.Module, state: dict, where: str) -> None:
    """load_state_dict, with a mismatch (another architecture, attribute count or size) as one clear line."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        detail = problems[0] if problems else str(exc).splitlines()[0]
        raise AttrnetError(f"{where}: the weights do not fit the network its config describes ({detail[:300]})") from None


def model_from_checkpoint(ckpt: dict, tta: str | None = None):
    """The checkpoint's network with the weights to predict with (built without downloading ImageNet weights).

    tta: test-time augmentation (none | flip | flip_shift); None keeps the run's `model.tta`.
    An MTL run's mtl_model.pt gives the paper's model (attrnet.mtl.model.LatentTaskNet).
    """
    if ckpt.get("kind") == KIND_LATENT_TASK:
        from attrnet.mtl.model import latent_task_net
        return latent_task_net(ckpt, tta)
    from attrnet.config import config_from_dict
    from attrnet.models.build import build_model

    where = ckpt.get("path", "checkpoint")
    cfg = config_from_dict(ckpt.get("config"), f"{where} (config)")
    cfg.model.pretrained = False  # the checkpoint holds the trained weights
    if tta is not None:
        cfg.model.tta = tta
    model = build_model(cfg.model, len(ckpt["attributes"]), 1 if ckpt.get("grayscale") else 3)
    load_weights(model, inference_state(ckpt), where)
    return model
