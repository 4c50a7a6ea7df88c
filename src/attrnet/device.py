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


def device_index(device: torch.device) -> int | None:
    """The device's index, a bare 'cuda' being the current GPU. (resolve_device leaves 'cuda' bare on purpose:
    asking for the current GPU there would start CUDA on GPU 0 in every torchrun process before each picks
    its own.)"""
    return torch.cuda.current_device() if device.type == "cuda" and device.index is None else device.index


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same one: torch.device('cuda') == torch.device('cuda:0') is False."""
    return a.type == b.type and device_index(a) == device_index(b)
