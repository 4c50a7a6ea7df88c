"""The paper's trained model as one network, so `evaluate` and `predict` take an MTL run folder like any other.

CNN features (one shared CNN, or one CNN per attribute) -> z-score with the training rows' statistics ->
scores x^m . (L s^m) + b_m. The scores play the part of logits: sigmoid(score) >= threshold is the decision,
with the thresholds the pipeline stored (0.5, i.e. score >= 0, unless mtl.thresholds=tuned).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from attrnet import model_file
from attrnet.errors import AttrnetError
from attrnet.models.build import check_tta, tta_average

MTL_MODEL_FILE = "mtl_model.pt"


class LatentTaskNet(nn.Module):
    """cnns: one AttributeNet (shared features) or M of them (per-attribute features)."""

    def __init__(self, cnns: list[nn.Module], mean: torch.Tensor, std: torch.Tensor, L: torch.Tensor,
                 S: torch.Tensor, b: torch.Tensor, tta: str = "none"):
        super().__init__()
        self.cnns = nn.ModuleList(cnns)
        self.register_buffer("mean", mean.float())   # [D] shared, [M, D] per attribute
        self.register_buffer("std", std.float())
        self.register_buffer("W", (L.double() @ S.double()).float())  # [D, M]
        self.register_buffer("b", b.float())
        self.tta = check_tta(tta)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.cnns) == 1:
            z = (self.cnns[0].features(x).float() - self.mean) / self.std         # [B, D]
            return z @ self.W + self.b
        f = torch.stack([cnn.features(x).float() for cnn in self.cnns])          # [M, B, D]
        z = (f - self.mean[:, None]) / self.std[:, None]
        return torch.einsum("mbd,dm->bm", z, self.W) + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta != "none" and not self.training:
            return tta_average(self.scores, x, self.tta)
        return self.scores(x)


def latent_task_net(ckpt: dict, tta: str | None = None) -> LatentTaskNet:
    """Rebuild the network of an MTL run from its mtl_model.pt (loaded by engine.checkpoint.load_checkpoint,
    which records the run folder) and the CNN(s) its features came from, found in that run folder."""
    from attrnet.config import config_from_dict
    from attrnet.engine.checkpoint import load_checkpoint, load_weights, model_from_checkpoint
    from attrnet.models.build import build_model

    run = Path(ckpt["run_dir"])
    cfg = config_from_dict(ckpt["config"], f"{run / MTL_MODEL_FILE} (config)")
    if ckpt["features"] == "shared":
        cnns = [model_from_checkpoint(load_checkpoint(run / "cnn" / "checkpoints" / "best.pt"), "none")]
    else:
        path = run / "feature_cnns.pt"
        if not path.is_file():
            raise AttrnetError(f"{run}: no feature_cnns.pt; this run did not keep its per-attribute CNNs "
                               f"(mtl.save_feature_cnns=false), so it cannot predict new images")
        saved = model_file.load_file(path, "attrnet feature-CNN file")
        stacked = saved.get("stacked_state") if isinstance(saved, dict) else None
        if not isinstance(stacked, dict):
            raise AttrnetError(f"{path}: not an attrnet feature-CNN file (no stacked_state)")
        model_cfg = dataclasses.replace(cfg.model, pretrained=False, tta="none")
        cnns = []
        for m in range(len(ckpt["attributes"])):
            cnn = build_model(model_cfg, 1, 1 if ckpt["grayscale"] else 3)
            load_weights(cnn, {k: v[m] for k, v in stacked.items()}, f"{path} (CNN {m})")
            cnns.append(cnn)
    return LatentTaskNet(cnns, ckpt["feature_mean"], ckpt["feature_std"], ckpt["L"], ckpt["S"], ckpt["b"],
                         tta if tta is not None else cfg.model.tta).eval()
