"""Any image a caller has (a file path, encoded bytes, a PIL image, a uint8 array or tensor) -> the uint8
[C, H, W] tensor a model reads: decoded, grey or RGB, resized exactly as its training cache was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrnet.data.images import decode_image_bytes, load_image, resize_image
from attrnet.errors import AttrnetError


def to_model_input(image: Any, size: tuple[int, int], grayscale: bool, resize: str) -> torch.Tensor:
    """One image as uint8 [C, H, W] at `size`, C = 1 if grayscale else 3; AttrnetError if it cannot be."""
    if isinstance(image, (str, Path)):
        return load_image(image, size, grayscale, resize)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return resize_image(decode_image_bytes(bytes(image), grayscale), size, resize)
    if _is_pil(image):
        arr = np.asarray(image.convert("L" if grayscale else "RGB"))
        return resize_image(_from_hwc(torch.from_numpy(np.ascontiguousarray(arr))), size, resize)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
        if image.ndim == 3 and image.shape[-1] in (1, 3) and image.shape[0] not in (1, 3):
            image = image.permute(2, 0, 1)  # H, W, C as numpy and PIL give it
    if isinstance(image, torch.Tensor):
        return resize_image(_channels(_checked_tensor(image), grayscale), size, resize)
    raise AttrnetError(f"cannot read an image from a {type(image).__name__}; give a path, bytes, a PIL image "
                       f"or a uint8 array [C, H, W]")


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency
        return False
    return isinstance(obj, Image.Image)


def _from_hwc(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _checked_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.uint8:
        raise AttrnetError(f"an image tensor must be uint8 (0-255), got {t.dtype}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3) or 0 in t.shape:
        raise AttrnetError(f"an image tensor must be [C, H, W] with C = 1 or 3, got {tuple(t.shape)}")
    return t


def _channels(t: torch.Tensor, grayscale: bool) -> torch.Tensor:
    """Grey from RGB with the ITU-R 601 weights PIL's convert("L") uses; RGB from grey by repetition."""
    if grayscale and t.shape[0] == 3:
        weights = torch.tensor([299, 587, 114], dtype=torch.int32)[:, None, None]
        return ((t.to(torch.int32) * weights).sum(0, keepdim=True) + 500).div(1000, rounding_mode="floor").to(torch.uint8)
    if not grayscale and t.shape[0] == 1:
        return t.expand(3, -1, -1).contiguous()
    return t


def stack_inputs(images: list, size: tuple[int, int], grayscale: bool, resize: str
                 ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """(uint8 batch of the readable ones, their indices, [(index, reason)] of the unreadable ones)."""
    good, ok, bad = [], [], []
    for i, image in enumerate(images):
        try:
            good.append(to_model_input(image, size, grayscale, resize))
            ok.append(i)
        except AttrnetError as exc:
            bad.append((i, str(exc)))
    channels = 1 if grayscale else 3
    batch = torch.stack(good) if good else torch.zeros((0, channels, *size), dtype=torch.uint8)
    return batch, ok, bad
