"""Any image a caller has (a file path, encoded bytes, a PIL image, a uint8 array or tensor) -> the uint8
[C, H, W] tensor a model reads: decoded, grey or RGB, resized exactly as its training cache was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from attrnet.data.images import decode_image_bytes, load_pixels, resize_image
from attrnet.errors import AttrnetError


def to_model_input(image: Any, size: tuple[int, int], grayscale: bool, resize: str,
                   name: str = "image") -> torch.Tensor:
    """One image as uint8 [C, H, W] at `size`, C = 1 if grayscale else 3; AttrnetError if it cannot be.
    name: how a message calls it (a path names itself)."""
    return resize_image(to_pixels(image, grayscale, name), size, resize)


def to_pixels(image: Any, grayscale: bool, name: str = "image") -> torch.Tensor:
    """One image at its own size as uint8 [C, H, W], C = 1 if grayscale else 3, upright (EXIF), alpha dropped:
    paths, encoded bytes, PIL images, uint8 arrays or tensors ([H, W], [H, W, C] or [C, H, W], C = 1, 3, 4)
    all follow the same rule."""
    if isinstance(image, (str, Path)):
        return load_pixels(image, grayscale)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(image), grayscale, name=name)
    if isinstance(image, Image.Image):
        arr = np.array((ImageOps.exif_transpose(image) or image).convert("L" if grayscale else "RGB"))
        return _from_hwc(torch.from_numpy(arr))
    if isinstance(image, np.ndarray):
        if not image.flags.writeable:  # e.g. np.asarray(pil_image): torch would warn about sharing it
            image = image.copy()
        image = torch.from_numpy(np.ascontiguousarray(image))
        if image.ndim == 3 and image.shape[-1] in CHANNELS and image.shape[0] not in CHANNELS:
            image = image.permute(2, 0, 1)  # H, W, C as numpy and PIL give it
    if isinstance(image, torch.Tensor):
        return convert_channels(_checked_tensor(image, name), grayscale)
    raise AttrnetError(f"cannot read an image from a {type(image).__name__}; give a path, bytes, a PIL image "
                       f"or a uint8 array ([H, W], [H, W, C] or [C, H, W], C = 1, 3 or 4)")


CHANNELS = (1, 3, 4)  # grey, RGB, RGBA (alpha is dropped, as PIL's convert("RGB") drops it)


def _from_hwc(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _checked_tensor(t: torch.Tensor, name: str = "image") -> torch.Tensor:
    if t.dtype != torch.uint8:
        raise AttrnetError(f"{name}: an image array must be uint8 (0-255), got {t.dtype}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in CHANNELS or 0 in t.shape:
        raise AttrnetError(f"{name}: an image array must be [H, W], [H, W, C] or [C, H, W] with C = 1, 3 or 4, "
                           f"got {tuple(t.shape)}")
    return t[:3] if t.shape[0] == 4 else t


def convert_channels(t: torch.Tensor, grayscale: bool) -> torch.Tensor:
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
            good.append(to_model_input(image, size, grayscale, resize, name=f"input {i}"))
            ok.append(i)
        except AttrnetError as exc:
            bad.append((i, str(exc)))
    channels = 1 if grayscale else 3
    batch = torch.stack(good) if good else torch.zeros((0, channels, *size), dtype=torch.uint8)
    return batch, ok, bad
