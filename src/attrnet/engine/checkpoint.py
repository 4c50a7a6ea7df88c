"""Checkpoints: one dict with everything needed to resume a run or rebuild its predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attrnet import atomic
from attrnet.errors import AttrnetError

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Write atomically (temp file, then rename): a run killed mid-write leaves the old file intact."""
    atomic.save_torch(path, {"version": CHECKPOINT_VERSION, **state})


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file, or the best checkpoint of a run folder."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise AttrnetError(f"{path}: not a readable attrnet checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "attributes" not in ckpt or not ("model" in ckpt or "L" in ckpt):
        raise AttrnetError(f"{path}: not an attrnet checkpoint (no model or attribute list)")
    if "L" in ckpt:  # the paper's model (mtl_model.pt): its feature CNN(s) live beside it in the run folder
        ckpt["run_dir"] = str(path.parent)
    return ckpt


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "mtl_model.pt", path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.is_file():
                return candidate
        raise AttrnetError(f"{path}: no checkpoints/best.pt (or mtl_model.pt) in this run folder")
    if not path.is_file():
        raise AttrnetError(f"checkpoint not found: {path}")
    return path


def inference_state(ckpt: dict) -> dict:
    """The weights to predict with: the EMA average when the run kept one, else the trained weights."""
    return ckpt.get("ema") or ckpt["model"]


def model_from_checkpoint(ckpt: dict, tta: str | None = None):
    """The checkpoint's network with the weights to predict with (built without downloading ImageNet weights).

    tta: test-time augmentation (none | flip | flip_shift); None keeps the run's `model.tta`.
    An MTL run's mtl_model.pt gives the paper's model (attrnet.mtl.model.LatentTaskNet).
    """
    if "L" in ckpt:
        from attrnet.mtl.model import latent_task_net
        return latent_task_net(ckpt, tta)
    from attrnet.config import config_from_dict
    from attrnet.models.build import build_model

    cfg = config_from_dict(ckpt["config"], "checkpoint config")
    cfg.model.pretrained = False  # the checkpoint holds the trained weights
    if tta is not None:
        cfg.model.tta = tta
    model = build_model(cfg.model, len(ckpt["attributes"]), 1 if ckpt["grayscale"] else 3)
    model.load_state_dict(inference_state(ckpt))
    return model
