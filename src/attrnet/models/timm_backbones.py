"""timm models as attrnet backbones ("timm/<name>", optionally with a weights tag: "timm/resnet18.a1_in1k").

timm already says what attrnet needs in each model's pretrained_cfg: the first convolution, the classifier,
mean, std and interpolation; nothing here depends on the model's name. timm is an optional dependency
(pip install 'attrnet[timm]'), imported only when a "timm/" backbone is asked for.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch.nn as nn

from attrnet.errors import AttrnetError
from attrnet.models.contract import BackboneInfo, first_conv_names, hub_checkpoint
from attrnet.models.weight_files import load_weights_file
from attrnet.preprocessing import IMAGENET_NORMALIZATION

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a Hub repo, in its order


def import_timm():
    try:
        import timm
    except ImportError:
        raise AttrnetError("a timm/ backbone needs timm: pip install 'attrnet[timm]' (or pip install timm)") from None
    return timm


def timm_name_problem(name: str) -> str | None:
    """What is wrong with a timm model name (None if timm knows it), without building the model."""
    try:
        timm = import_timm()
    except AttrnetError as exc:
        return str(exc)
    arch = name.split(".")[0]
    if timm.is_model(name) and (name == arch or name in timm.list_pretrained(name)):
        return None
    if timm.is_model(arch):
        tags = [t for t in timm.list_pretrained(f"{arch}.*")]
        return f"timm has no weights {name!r}; {arch}'s are: {', '.join(tags) or 'none'}"
    close = difflib.get_close_matches(arch, timm.list_models(), n=3)
    maybe = f" (did you mean {', '.join('timm/' + c for c in close)}?)" if close else ""
    return (f"unknown timm model {name!r}{maybe}; list them with "
            f"python -c 'import timm; print(timm.list_models(\"*{arch[:6]}*\"))'")


def _pretrained_cfg(name: str) -> dict:
    cfg = import_timm().models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def timm_normalization(name: str) -> dict:
    """mean, std and interpolation from the model's pretrained_cfg (timm's own record of its weights)."""
    cfg = _pretrained_cfg(name)
    return {"mean": [float(v) for v in cfg.get("mean", IMAGENET_NORMALIZATION["mean"])],
            "std": [float(v) for v in cfg.get("std", IMAGENET_NORMALIZATION["std"])],
            "interpolation": str(cfg.get("interpolation") or "bilinear")}


def cached_weights(name: str) -> Path | None:
    """The model's weights file if a cache already holds it: the Hugging Face Hub cache (where timm downloads
    to), then torch hub's checkpoints folder (timm's older download location, by the file's URL)."""
    cfg = _pretrained_cfg(name)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else HF_WEIGHT_FILES
            for filename in files:
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str):
                    return Path(found)
    if cfg.get("url"):
        path = hub_checkpoint(cfg["url"])
        if path.is_file():
            return path
    return None


def create_timm_backbone(name: str, pretrained: bool | str = False, drop_path: float = 0.0) -> nn.Module:
    """timm.create_model(name, num_classes=0): the pooled features, classifier removed by timm itself;
    drop_path: timm's drop_path_rate (stochastic depth)."""
    timm = import_timm()
    cached = cached_weights(name) if pretrained is True else None
    overlay = {"file": str(cached)} if cached is not None else None
    extra = {"drop_path_rate": drop_path} if drop_path > 0 else {}
    try:
        model = timm.create_model(name, pretrained=pretrained is True, num_classes=0, pretrained_cfg_overlay=overlay,
                                  **extra)
    except TypeError as exc:
        if extra and "drop_path_rate" in str(exc):
            raise AttrnetError(f"model.drop_path: timm's {name} takes no drop_path_rate; set model.drop_path=0") from None
        raise
    except Exception as exc:  # offline (the Hub's HTTP errors are not OSErrors), or a broken download
        if pretrained is not True:
            raise
        raise AttrnetError(f"model.pretrained: could not load timm's weights for {name} "
                           f"({str(exc).splitlines()[0][:200]}); on an offline machine put them in the Hugging "
                           f"Face cache (huggingface-cli download {_pretrained_cfg(name).get('hf_hub_id')}) "
                           f"or set model.pretrained to the path of a weights file, and HF_HUB_OFFLINE=1 to "
                           f"fail at once instead of after the Hub's retries") from None
    cfg = dict(model.pretrained_cfg)
    if isinstance(pretrained, str):
        classifier = cfg.get("classifier") or ()
        load_weights_file(model, pretrained, [classifier] if isinstance(classifier, str) else list(classifier))
    model.num_features = getattr(model, "head_hidden_size", None) or model.num_features
    size = cfg.get("input_size")
    source = str(pretrained) if isinstance(pretrained, str) else (f"timm:{cached or name}" if pretrained else "")
    model.backbone_info = BackboneInfo(timm_normalization(name) if pretrained else dict(IMAGENET_NORMALIZATION),
                                       first_conv_names(model, cfg.get("first_conv")),
                                       tuple(size[-2:]) if pretrained and size else None, source)
    if source:
        log.info("backbone timm/%s: weights from %s", name, source)
    return model
