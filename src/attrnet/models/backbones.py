"""Backbones by name: every torchvision classification model, and every timm model as "timm/<name>".

One contract for both sources (timm's, which torchvision models are brought to): a module whose forward(x)
gives pooled features [B, num_features], its classifier removed, with `num_features` (the feature size) and
`backbone_info` (a BackboneInfo: the weights' normalisation, the convolutions that read the image, ...).

model.pretrained: False; True (the source's own mechanism: torchvision's weights API, timm's Hugging Face
Hub; files already in their caches are used without a network); or the path of a weights file, loaded into
either source, mapped from a known alternative key layout when the mapping is exact (attrnet.models.weight_maps).
Grey input (in_chans=1) goes through the first convolution's filters summed over RGB.
"""

from __future__ import annotations

import difflib
import functools
import logging

import torch
import torch.nn as nn
import torchvision

from attrnet.errors import AttrnetError
from attrnet.models.contract import BackboneInfo, backbone_info, first_conv_names, hub_checkpoint
from attrnet.models.drop_path import add_drop_path
from attrnet.models.timm_backbones import create_timm_backbone, timm_name_problem, timm_normalization
from attrnet.models.weight_files import load_weights_file
from attrnet.preprocessing import IMAGENET_NORMALIZATION

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"
# googlenet and inception_v3 were trained on (x - 0.5) / 0.5: their builders switch on `transform_input`, which
# turns ImageNet-normalised RGB into that inside the network (and cannot take grey input). attrnet switches it
# off and normalises the images that way instead (a test checks this tuple against every torchvision model).
TRANSFORM_INPUT_MODELS = ("googlenet", "inception_v3")
HALF_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
NUM_CLASSES = 1000  # the builders' default head, found by its size and removed


def torchvision_names() -> list[str]:
    """Every torchvision classification model (detection, video, ... models are in other modules)."""
    return torchvision.models.list_models(module=torchvision.models)


def backbone_name_problem(name) -> str | None:
    """What is wrong with a model.backbone value (None when it names a model), without building anything;
    timm is imported only for a "timm/" name."""
    if not isinstance(name, str) or not name:
        return f"must be a model name, got {name!r}"
    if name.startswith(TIMM_PREFIX):
        return timm_name_problem(name[len(TIMM_PREFIX):])
    names = torchvision_names()
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=3)
    maybe = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown backbone {name!r}{maybe}; give a torchvision classification model ({len(names)} of them: "
            f"python -c 'import torchvision; print(torchvision.models.list_models(module=torchvision.models))') "
            f"or timm/<name> for a timm model (pip install 'attrnet[timm]'; "
            f"python -c 'import timm; print(timm.list_models(\"*lite*\"))')")


def create_backbone(name: str, pretrained: bool | str = False, in_chans: int = 3,
                    small_input: bool = False, drop_path: float = 0.0) -> nn.Module:
    """A classifier without its classifier, following the contract in this module's docstring.

    pretrained: False, True (the source's own weights) or the path of a weights file.
    small_input: keep the spatial detail of 32-64 px images (a stride-1 stem; see adapt_small_input).
    drop_path: stochastic depth at the deepest residual block (0 = none; attrnet.models.drop_path).
    """
    problem = backbone_name_problem(name)
    if problem:
        raise AttrnetError(f"model.backbone: {problem}")
    if name.startswith(TIMM_PREFIX):
        model = create_timm_backbone(name[len(TIMM_PREFIX):], pretrained, drop_path)
    else:
        model = _create_torchvision(name, pretrained, drop_path)
    if small_input:
        adapt_small_input(model, name)
    if in_chans != 3:
        adapt_first_conv(model, in_chans)
    return model


def weights_normalization(name: str, pretrained: bool | str) -> dict:
    """The mean, std (RGB, 0-1 scale) and resize method the backbone's weights were trained with, known
    without building it: what training normalises images with and what a checkpoint stores."""
    norm = _normalization(name, pretrained if isinstance(pretrained, bool) else "file", torch.hub.get_dir())
    return {"mean": list(norm["mean"]), "std": list(norm["std"]), "interpolation": norm["interpolation"]}


@functools.lru_cache(maxsize=256)
def _normalization(name: str, pretrained: bool | str, hub_dir: str) -> dict:
    # hub_dir: which cached file `pretrained: true` finds depends on it (training calls this for every batch)
    if pretrained is False:
        return dict(IMAGENET_NORMALIZATION)
    if name.startswith(TIMM_PREFIX):
        return timm_normalization(name[len(TIMM_PREFIX):])
    weights = torchvision_weights(name) if pretrained is True else torchvision.models.get_model_weights(name).DEFAULT
    t = weights.transforms()
    norm = {"mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std],
            "interpolation": t.interpolation.value}
    if name in TRANSFORM_INPUT_MODELS:
        norm.update(HALF_NORMALIZATION)
    return norm


# ---- torchvision ------------------------------------------------------------------------------------------

def torchvision_weights(name: str):
    """The weights `model.pretrained: true` means: the first of the model's ImageNet weights (DEFAULT first)
    whose file is already in torch hub's checkpoints folder, so an offline machine uses what it has; DEFAULT
    (downloaded once) when none is. Only weights for the same architecture and 1000 classes are candidates."""
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    candidates = [default] + [w for w in enum if w is not default
                              and w.meta.get("num_params") == default.meta.get("num_params")
                              and w.meta.get("min_size") == default.meta.get("min_size")
                              and len(w.meta.get("categories") or ()) == NUM_CLASSES]
    for weights in candidates:
        if hub_checkpoint(weights.url).is_file():
            return weights
    return default


def _create_torchvision(name: str, pretrained: bool | str, drop_path: float = 0.0) -> nn.Module:
    weights = torchvision_weights(name) if pretrained is True else None
    try:
        model, builder_drop = _build_torchvision(name, weights, drop_path)
    except Exception as exc:  # offline, a broken download, a hash mismatch: urllib, OSError, RuntimeError
        if weights is None:
            raise
        raise AttrnetError(f"model.pretrained: could not load torchvision's {type(weights).__name__}."
                           f"{weights.name} for {name} ({str(exc).splitlines()[0][:200]}); on an offline machine "
                           f"put {hub_checkpoint(weights.url).name} into {hub_checkpoint(weights.url).parent} "
                           f"(benchmarks/offline_weights.sh does this for mobilenet_v2) or set "
                           f"model.pretrained to the path of a weights file") from None
    if drop_path > 0 and not builder_drop:
        if not add_drop_path(model, drop_path):
            raise AttrnetError(f"model.drop_path: backbone {name} has no residual blocks attrnet can drop "
                               f"(supported: timm models, torchvision's mobilenet_v2/v3, resnets and the models "
                               f"whose builders take stochastic_depth_prob); set model.drop_path=0")
    _drop_auxiliary_heads(model)
    if hasattr(model, "transform_input"):
        model.transform_input = False  # see TRANSFORM_INPUT_MODELS: the normalisation does it instead
    removed, num_features = remove_classifier(model, name)
    if isinstance(pretrained, str):
        load_weights_file(model, pretrained, removed)
    model.num_features = num_features
    source = (f"torchvision:{type(weights).__name__}.{weights.name}" if weights is not None
              else (str(pretrained) if isinstance(pretrained, str) else ""))
    size = _weights_input_size(weights or torchvision.models.get_model_weights(name).DEFAULT) if pretrained else None
    model.backbone_info = BackboneInfo(weights_normalization(name, pretrained), first_conv_names(model), size, source)
    if source:
        log.info("backbone %s: weights from %s", name, source)
    return model


def _build_torchvision(name: str, weights, drop_path: float) -> tuple[nn.Module, bool]:
    """torchvision's model, and whether its builder took the stochastic depth (stochastic_depth_prob: the
    EfficientNets, ConvNeXt, Swin, MaxViT; the other classes refuse the argument before loading anything)."""
    if drop_path > 0:
        try:
            return torchvision.models.get_model(name, weights=weights, stochastic_depth_prob=drop_path), True
        except TypeError as exc:
            if "stochastic_depth_prob" not in str(exc):
                raise
    return torchvision.models.get_model(name, weights=weights), False


def _weights_input_size(weights) -> tuple[int, int]:
    crop = weights.transforms().crop_size
    return (crop[0], crop[-1])


def _drop_auxiliary_heads(model: nn.Module) -> None:
    """googlenet and inception_v3 return extra auxiliary logits in training mode: features only here."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for child in list(model._modules):
            if child.lower().startswith("aux"):
                setattr(model, child, None)


def remove_classifier(model: nn.Module, name: str = "model") -> tuple[list[str], int]:
    """Replace the layer that gives the class scores (the last Linear, or 1x1 convolution, with NUM_CLASSES
    outputs) and the Dropout layers just before it in the same Sequential by Identity.

    Returns (the names of the removed layers, the feature size = the classifier's input size).
    """
    scores = [(n, m) for n, m in model.named_modules()
              if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES)
              or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES and m.kernel_size == (1, 1))]
    if not scores:  # pragma: no cover - every torchvision classifier has one (a test builds them all)
        raise AttrnetError(f"backbone {name}: no classifier layer with {NUM_CLASSES} outputs found")
    layer_name, layer = scores[-1]
    num_features = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    parent_name, _, child = layer_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    removed = [layer_name]
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        i = keys.index(child)
        while i > 0 and isinstance(parent._modules[keys[i - 1]], nn.Dropout):
            i -= 1
            parent._modules[keys[i]] = nn.Identity()
            removed.append(f"{parent_name}.{keys[i]}" if parent_name else keys[i])
    setattr(parent, child, nn.Identity())
    return removed, num_features


# ---- adapting either source to the input ---------------------------------------------------------------------

def adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """The convolutions that read the image made to take `in_chans` channels, in place (class, padding and
    names kept): for grey input each filter is its RGB filters summed, so a grey image meets the pretrained
    filters as the same grey image in three channels would; for other counts the mean filter, repeated and
    scaled by 3/in_chans."""
    names = backbone_info(model).first_convs
    if not names:
        raise AttrnetError(f"this backbone reads the image without a convolution (a linear patch embedding): "
                           f"it cannot be adapted to {in_chans} input channel(s); use data.grayscale=false")
    for name in names:
        conv = model.get_submodule(name)
        if conv.in_channels == in_chans:
            continue
        if conv.groups != 1:  # pragma: no cover - no known stem
            raise AttrnetError(f"backbone's first convolution {name} is grouped: cannot adapt it to {in_chans} "
                               f"input channels")
        with torch.no_grad():
            w = conv.weight
            if in_chans == 1:
                new = w.sum(dim=1, keepdim=True)
            else:
                new = w.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) * 3 / in_chans
        conv.weight = nn.Parameter(new.contiguous(), requires_grad=w.requires_grad)
        conv.in_channels = in_chans


def adapt_small_input(model: nn.Module, name: str = "model") -> None:
    """Keep the spatial detail of 32-64 px images.

    A ResNet-style stem (`conv1` and `maxpool`): a new 3x3 stride-1 first convolution and no max-pool, as the
    seed did. Any other network whose first convolution downsamples with overlapping windows (kernel larger
    than stride: MobileNet, EfficientNet, RegNet, DenseNet, ...): that convolution's stride set to 1, its
    weights kept. A patch embedding (kernel == stride: ViT, Swin, ConvNeXt) has no such change: an error.
    """
    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    info = backbone_info(model)
    if type(conv1) is nn.Conv2d and isinstance(maxpool, nn.MaxPool2d):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return
    if not info.first_convs:
        raise AttrnetError(f"model.small_input is not supported for {name}: it reads the image through a linear "
                           f"patch embedding; use a larger data.image_size or a CNN backbone")
    convs = [(n, model.get_submodule(n)) for n in info.first_convs]
    conv_name, conv = convs[0]
    if max(conv.stride) == 1:
        raise AttrnetError(f"model.small_input: backbone {name}'s first convolution ({conv_name}) has stride 1 "
                           f"already; set model.small_input=false")
    if any(tuple(c.kernel_size) == tuple(c.stride) for _, c in convs):
        raise AttrnetError(f"model.small_input is not supported for {name}: its first layer ({conv_name}) is a "
                           f"patch embedding (kernel {tuple(conv.kernel_size)} = stride), not a convolution "
                           f"whose stride can be dropped; use a larger data.image_size or a CNN backbone")
    for _, c in convs:  # both branches of a two-branch stem, so that their outputs still add up
        c.stride = (1, 1)
