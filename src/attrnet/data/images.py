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


def resize_images(images: list[torch.Tensor], size: tuple[int, int], resize: str = "squash") -> list[torch.Tensor]:
    """resize_image for a list of images, in one batched call per distinct input shape (a folder of
    same-sized photos is then one call, not one per image); the output keeps the input order."""
    out: list[torch.Tensor | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape), []).append(i)
    for members in by_shape.values():
        batch = resize_image(torch.stack([images[i] for i in members]), size, resize)
        for i, img in zip(members, batch):
            out[i] = img
    return out  # type: ignore[return-value]
