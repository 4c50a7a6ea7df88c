"""model.pretrained: PATH: a weights file read without running code and loaded into a backbone.

Strict about what matters: every tensor of the backbone must come from the file (a missing key is an error),
apart from the classifier, which attrnet removes; extra keys in the file are logged. A file in a known
alternative key layout is mapped first (attrnet.models.weight_maps).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from attrnet.errors import AttrnetError
from attrnet.models.weight_maps import to_model_layout

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")  # training scripts' dicts around the weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.pt/.bin (torch.save, read with weights_only=True) or .safetensors file."""
    path = Path(path)
    where = f"model.pretrained: {path}"
    if not path.is_file():
        raise AttrnetError(f"model.pretrained: weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AttrnetError(f"{where} is not a PyTorch state dict ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AttrnetError(f"{where} is not a PyTorch state dict (no tensors by name in it)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel / DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights_file(model: nn.Module, path: str | Path, classifier: list[str]) -> None:
    """Load `path` into `model` (whose classifier layers, named in `classifier`, were removed)."""
    where = f"model.pretrained: {path}"
    state = to_model_layout(read_state_dict(path), model.state_dict(), where)
    state = {k: v for k, v in state.items() if not any(k == c or k.startswith(c + ".") for c in classifier)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another variant of the architecture
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        raise AttrnetError(f"{where} does not fit this backbone ({(lines or [str(exc)])[0][:300]})") from None
    if missing:
        raise AttrnetError(f"{where} does not fit this backbone ({len(missing)} of its {len(model.state_dict())} "
                           f"tensors are not in the file, e.g. {missing[0]}; the file has e.g. "
                           f"{next(iter(state), 'nothing')})")
    if unexpected:
        log.warning("%s: %d tensors of the file are not used by the backbone, e.g. %s", where, len(unexpected),
                    unexpected[0])
