"""Reading saved models: checkpoints (run folders, .pt files) and the network they describe.

Everything is read weights-only (attrnet.model_file): opening a model never runs code from it. The kind of
network comes from the file's `kind` field: an AttributeNet (checkpoints/best.pt) or the paper's latent-task
model on CNN features (mtl_model.pt), whose CNN(s) are found beside it in its run folder.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from attrnet import model_file
from attrnet.config import Config, config_from_dict
from attrnet.errors import AttrnetError
from attrnet.models.factory import KIND_ATTRIBUTE_NET, KIND_LATENT_TASK, KINDS, create_network
from attrnet.models.latent import latent_weights
from attrnet.preprocessing import Preprocessing

CHECKPOINT_VERSION = 2                # 2: weights-only (plain types), with `kind`
LOADED_ONLY = ("version", "path", "run_dir")  # added by load_checkpoint, not stored
MTL_MODEL_FILE = "mtl_model.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the model file of a run folder (the MTL model first, else the best epoch)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / MTL_MODEL_FILE, path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.is_file():
                return candidate
        if (path / "checkpoints" / "last.pt").is_file():
            raise AttrnetError(f"{path}: no checkpoints/best.pt yet (the run has not finished an epoch with a "
                               f"validation score); give checkpoints/last.pt to use the latest weights")
        raise AttrnetError(f"{path}: no checkpoints/best.pt (or {MTL_MODEL_FILE}) in this run folder")
    if not path.is_file():
        raise AttrnetError(f"checkpoint not found: {path}")
    return path


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
    if kind == KIND_LATENT_TASK:  # its feature CNN(s) live beside it in the run folder
        ckpt["run_dir"] = str(path.parent)
    ckpt["path"] = str(path)
    return ckpt


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


def preprocessing_of(ckpt: dict) -> Preprocessing:
    """How the checkpoint's model reads an image (attrnet.preprocessing)."""
    return Preprocessing.from_checkpoint(ckpt, ckpt.get("config") or {})


def checkpoint_config(ckpt: dict) -> Config:
    return config_from_dict(ckpt.get("config"), f"{ckpt.get('path', 'checkpoint')} (config)")


def network_from_checkpoint(ckpt: dict) -> nn.Module:
    """The checkpoint's network in eval mode (normalised images -> logits [B, M]), with the weights to
    predict with: the architecture from models.factory.create_network (nothing is downloaded), then the
    checkpoint's weights (for the paper's model, its CNNs' from its run folder, and W = L S)."""
    cfg = checkpoint_config(ckpt)
    features = ckpt.get("features", "shared")
    net = create_network(ckpt["kind"], cfg.model, len(ckpt["attributes"]), preprocessing_of(ckpt).channels, features)
    state = inference_state(ckpt) if ckpt["kind"] == KIND_ATTRIBUTE_NET else _latent_task_state(ckpt, features)
    load_weights(net, state, ckpt.get("path", "checkpoint"))
    return net.eval()


def _latent_task_state(ckpt: dict, features: str) -> dict:
    """The paper's model of an MTL run as one state dict: its CNN(s) (cnn/checkpoints/best.pt for shared
    features, feature_cnns.pt for one CNN per attribute), the feature standardisation and W = L S."""
    run = Path(ckpt["run_dir"])
    if features == "shared":
        cnns = [inference_state(load_checkpoint(run / "cnn" / "checkpoints" / "best.pt"))]
    else:
        path = run / "feature_cnns.pt"
        if not path.is_file():
            raise AttrnetError(f"{run}: no feature_cnns.pt; this run did not keep its per-attribute CNNs "
                               f"(mtl.save_feature_cnns=false), so it cannot predict new images")
        saved = model_file.load_file(path, "attrnet feature-CNN file")
        stacked = saved.get("stacked_state") if isinstance(saved, dict) else None
        if not isinstance(stacked, dict):
            raise AttrnetError(f"{path}: not an attrnet feature-CNN file (no stacked_state)")
        cnns = [{k: v[m] for k, v in stacked.items()} for m in range(len(ckpt["attributes"]))]
    try:
        state = {"mean": ckpt["feature_mean"], "std": ckpt["feature_std"], "W": latent_weights(ckpt["L"], ckpt["S"]),
                 "b": ckpt["b"]}
    except (KeyError, RuntimeError) as exc:
        raise AttrnetError(f"{ckpt.get('path')}: not a complete latent-task model ({exc})") from None
    for m, cnn in enumerate(cnns):
        state.update({f"cnns.{m}.{k}": v for k, v in cnn.items()})
    return state
