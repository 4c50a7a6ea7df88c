"""Weight files converted once into a model's own key layout (benchmarks/offline_weights.sh): not part of building a
model, which maps a known layout as it loads (attrnet.models.weight_files)."""

from __future__ import annotations

from pathlib import Path

import torch

from attrnet import atomic
from attrnet.errors import AttrnetError
from attrnet.models.timm_backbones import import_timm
from attrnet.models.weight_files import read_state_dict
from attrnet.models.weight_maps import to_model_layout


def convert_file(src: str | Path, dst: str | Path, model: str = "tf_efficientnet_lite0") -> Path:
    """Write `src` (a file in a known layout) as a plain state dict in timm `model`'s own keys, classifier
    included: a file that timm.create_model(model, pretrained_cfg_overlay={"file": dst}) and attrnet's
    model.pretrained both load. Written atomically: a stopped conversion leaves no half file. Needs timm."""
    state = read_state_dict(src)
    with torch.device("meta"):  # only the keys and shapes are needed
        target = import_timm().create_model(model).state_dict()
    mapped = to_model_layout(state, target, str(src))
    if set(mapped) != set(target):
        raise AttrnetError(f"{src}: not in a layout that maps onto timm's {model}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(dst) as tmp:
        torch.save({k: v.contiguous() for k, v in mapped.items()}, tmp)
    return dst
