"""Decoding one image file into a fixed-size uint8 tensor (torchvision's decoders)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

RESIZE_METHODS = ("squash", "crop")


def load_image(path: str | Path, size: tuple[int, int], grayscale: bool = False,
               resize: str = "squash") -> torch.Tensor:
    """Decode JPEG/PNG/... into uint8 [C, H, W] at `size` (height, width); raises on a broken file."""
    mode = ImageReadMode.GRAY if grayscale else ImageReadMode.RGB
    img = decode_image(read_file(str(path)), mode=mode)
    return resize_image(img, size, resize)


def resize_image(img: torch.Tensor, size: tuple[int, int], resize: str = "squash") -> torch.Tensor:
    """squash: the whole image to size; crop: scale the short side, then take the centre."""
    if resize == "crop":
        h, w = img.shape[-2:]
        scale = max(size[0] / h, size[1] / w)
        img = TF.resize(img, [max(size[0], round(h * scale)), max(size[1], round(w * scale))], antialias=True)
        return TF.center_crop(img, list(size))
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return TF.resize(img, list(size), antialias=True)
