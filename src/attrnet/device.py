"""Which device to run on: `auto` (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N."""

from __future__ import annotations

import torch

from attrnet.errors import AttrnetError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AttrnetError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AttrnetError(f"device {name!r} asked for, but this machine has no CUDA GPU; use the CPU "
                           f"(--device cpu, or train.device=cpu in a config)")
    if device.type not in ("cpu", "cuda"):
        raise AttrnetError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same one: torch.device('cuda') == torch.device('cuda:0') is False, so a bare
    'cuda' is taken as the current GPU."""
    def index(d: torch.device) -> int | None:
        return torch.cuda.current_device() if d.type == "cuda" and d.index is None else d.index
    return a.type == b.type and index(a) == index(b)
