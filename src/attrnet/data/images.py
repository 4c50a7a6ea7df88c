"""Decoding one image file into a fixed-size uint8 tensor.

JPEG goes through torchvision's decoder (libjpeg-turbo: the fast path for photo data sets). PNG, GIF and
WebP go through PIL: torchvision 0.29's PNG decoder kills the whole process (SIGSEGV) on any libpng error
after the header, such as one flipped bit in the pixel data; its GIF decoder returns every frame of an
animation, and its WebP decoder ignores the grayscale mode. PIL reads every file's header first, so a file
declaring more than MAX_PIXELS pixels (a damaged JPEG header can declare 65535 x 65535) is refused before
anything is allocated for it.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from attrnet.errors import AttrnetError
from attrnet.preprocessing import RESIZE_INTERPOLATION as RESIZE_INTERPOLATION_NAME

RESIZE_METHODS = ("squash", "crop")
# PIL's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): about 13.4k x 13.4k, 537 MB as RGB.
MAX_PIXELS = 178_956_970
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with more pictures appended; the first one is decoded
PIL_FORMATS = ("PNG", "GIF", "WEBP", "BMP", "TIFF")
READ_FORMATS = "JPEG, PNG, GIF, WebP, BMP or TIFF"  # what a refusal lists
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how PIL opens a 16-bit grey PNG
# crop mode keeps at most this many times the span the target needs before scaling (see _centre_strip)
CROP_MARGIN = 8


def load_pixels(path: str | Path, grayscale: bool = False) -> torch.Tensor:
    """A file's pixels at its own size, uint8 [C, H, W] (see load_image), or AttrnetError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AttrnetError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_image_bytes(data, grayscale, name=str(path))


def load_image(path: str | Path, size: tuple[int, int], grayscale: bool = False,
               resize: str = "squash") -> torch.Tensor:
    """Decode JPEG/PNG/GIF/WebP/BMP/TIFF into uint8 [C, H, W] at `size` (height, width), C = 1 if grayscale else
    3, turned upright as its EXIF orientation says (as a photo viewer shows it).

    A file that cannot be decoded raises AttrnetError naming it; the cache and the predictor count such a
    file as unreadable."""
    return resize_image(load_pixels(path, grayscale), size, resize)


def decode_image_bytes(data: bytes, grayscale: bool = False, name: str = "image") -> torch.Tensor:
    """One encoded image as uint8 [C, H, W] at its own size (C = 1 if grayscale else 3), or AttrnetError."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # parses the header only
            _check_header(im, name)
            if im.format in JPEG_FORMATS:
                img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                  mode=ImageReadMode.GRAY if grayscale else ImageReadMode.RGB,
                                  apply_exif_orientation=True)
            else:
                img = _pil_pixels(ImageOps.exif_transpose(im) or im, grayscale)
    except AttrnetError:
        raise
    except UnidentifiedImageError:  # PIL's message names an in-memory buffer object: no help to anyone
        raise AttrnetError(f"cannot decode image {name}: not an image in a format attrnet reads "
                           f"({READ_FORMATS})") from None
    except Image.DecompressionBombError:  # PIL's own check, at 2 x Image.MAX_IMAGE_PIXELS
        limit = 2 * (Image.MAX_IMAGE_PIXELS or MAX_PIXELS // 2)
        raise AttrnetError(f"image {name} declares more than {limit} pixels, too many to decode (its header "
                           f"may be damaged)") from None
    except Exception as exc:  # PIL and torchvision raise OSError, RuntimeError, SyntaxError, ValueError, ...
        raise AttrnetError(f"cannot decode image {name}: {_reason(exc)}") from None
    return _checked_pixels(img, grayscale, name)


def _check_header(im: Image.Image, name: str) -> None:
    """A format we decode, a size we can afford."""
    if im.format not in JPEG_FORMATS + PIL_FORMATS:
        raise AttrnetError(f"cannot decode image {name}: {im.format} images are not supported; "
                           f"convert it to one of {READ_FORMATS}")
    width, height = im.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise AttrnetError(f"image {name} declares {width} x {height} pixels; an image must have between 1 "
                           f"and {MAX_PIXELS} pixels (its header may be damaged)")


def _pil_pixels(im: Image.Image, grayscale: bool) -> torch.Tensor:
    """The first frame as uint8 [C, H, W]; alpha is dropped, palettes expanded, 16-bit grey keeps its high
    byte (what an 8-bit decoder of the same file gives)."""
    if im.mode in SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(im), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        arr = grey if grayscale else np.repeat(grey[:, :, None], 3, axis=2)
    else:
        arr = np.array(im.convert("L" if grayscale else "RGB"))  # a copy: PIL's own buffer is read-only
    tensor = torch.from_numpy(arr)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _checked_pixels(img: torch.Tensor, grayscale: bool, name: str) -> torch.Tensor:
    """What every caller relies on (the cache writes the pixels into a uint8 [C, H, W] row)."""
    channels = 1 if grayscale else 3
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != channels or 0 in img.shape:
        raise AttrnetError(f"cannot decode image {name}: it decoded to {img.dtype} {tuple(img.shape)}, "
                           f"expected uint8 ({channels}, height, width)")
    return img


def _reason(exc: Exception) -> str:
    """The decoder's message without torchvision's 'function, /path/file.cpp:123, ' prefix."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\w+, \S+:\d+, ", "", text)[:200] or type(exc).__name__


# The one resize of attrnet (the cache, so training and evaluation, and inference): antialiased, with the
# interpolation attrnet.preprocessing records (what exported models' descriptions say).
RESIZE_INTERPOLATION = TF.InterpolationMode(RESIZE_INTERPOLATION_NAME)


def resize_image(img: torch.Tensor, size: tuple[int, int], resize: str = "squash") -> torch.Tensor:
    """squash: the whole image to size; crop: scale the short side, then take the centre."""
    if resize == "crop":
        img = _centre_strip(img, size)
        h, w = img.shape[-2:]
        scale = max(size[0] / h, size[1] / w)
        img = TF.resize(img, [max(size[0], round(h * scale)), max(size[1], round(w * scale))],
                         interpolation=RESIZE_INTERPOLATION, antialias=True)
        return TF.center_crop(img, list(size))
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return TF.resize(img, list(size), interpolation=RESIZE_INTERPOLATION, antialias=True)


def _centre_strip(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre of a source far longer than the target's shape: scaling all of a 1 x 65535 strip (what a
    damaged JPEG header can declare) to a 224 px short side would allocate gigabytes the crop then drops.
    Sources within CROP_MARGIN x of the target's aspect ratio come back whole, so their pixels do not change."""
    h, w = img.shape[-2:]
    keep_h = min(h, math.ceil(CROP_MARGIN * size[0] * w / size[1]))
    keep_w = min(w, math.ceil(CROP_MARGIN * size[1] * h / size[0]))
    if (keep_h, keep_w) == (h, w):
        return img
    top, left = (h - keep_h) // 2, (w - keep_w) // 2
    return img[..., top:top + keep_h, left:left + keep_w]


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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, and every image file under named folders (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise AttrnetError(f"no such image or folder: {p}")
    if not out:
        raise AttrnetError(f"no images found in {', '.join(map(str, inputs))}")
    return out
