"""Decoding batches of encoded images on a device: JPEGs through torchvision.io.decode_jpeg on a list (one
call; nvJPEG's batched decoder on a GPU, libjpeg-turbo on the CPU), resized there, one call per distinct
shape. Anything else (PNG, GIF, WebP, a JPEG the device decoder refuses) goes through the CPU decoder that
checks headers (attrnet.data.images.decode_image_bytes), and a file neither can read is reported, never raised.

Every JPEG's header is read first (PIL, no pixels decoded): a damaged header can declare 65535 x 65535 pixels,
which no decoder should be asked to allocate. Used by prediction from folders and by the GPU cache build.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from attrnet.data.images import JPEG_FORMATS, MAX_PIXELS, decode_image_bytes, resize_images
from attrnet.device import device_index
from attrnet.errors import AttrnetError


def read_encoded(path: str | Path) -> torch.Tensor | None:
    """A file's bytes as a uint8 CPU tensor (None when it cannot be read)."""
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError:
        return None


def is_safe_jpeg(data: torch.Tensor) -> bool:
    """A JPEG (by its header, read without decoding) of an affordable size."""
    if data.numel() < 4 or int(data[0]) != 0xFF or int(data[1]) != 0xD8:
        return False
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            width, height = im.size
            return im.format in JPEG_FORMATS and 0 < width * height <= MAX_PIXELS
    except Exception:  # not a readable header: the CPU decoder will say why
        return False


@functools.lru_cache(maxsize=None)
def _decoder_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=index)


def _decode_jpegs(data: list[torch.Tensor] | torch.Tensor, device: torch.device):
    """decode_jpeg, made safe on a GPU: nvJPEG's hardware decoder writes its outputs without waiting for work
    queued on the stream it is given, and the allocator hands out a block as soon as it is freed on that stream
    (pytorch/vision#9606, meta-pytorch/torchcodec#1634), so memory that queued kernels still read could be
    overwritten. On a stream that only decodes, every block the allocator hands out is idle (a block the
    training used is reused only once that use, recorded by record_stream, is done)."""
    if device.type != "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    current = torch.cuda.current_stream(device)
    stream = _decoder_stream(device_index(device))
    with torch.cuda.stream(stream):
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    current.wait_stream(stream)
    for image in out if isinstance(out, list) else [out]:
        image.record_stream(current)
    return out


def decode_batch(encoded: list[torch.Tensor | None], size: tuple[int, int], resize: str,
                 device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """RGB uint8 [B, 3, H, W] on `device` at `size` for a batch of encoded files, and ok [B] (False: unreadable,
    its row zeros). encoded: uint8 CPU tensors (None: a file that could not be read)."""
    device = torch.device(device)
    ok = np.zeros(len(encoded), dtype=bool)
    jpegs = [i for i, data in enumerate(encoded) if data is not None and is_safe_jpeg(data)]
    decoded: dict[int, torch.Tensor] = {}
    try:
        if jpegs:
            images = _decode_jpegs([encoded[i] for i in jpegs], device)
            decoded.update(zip(jpegs, images))
    except RuntimeError:  # one file the decoder refuses fails the whole call: then each alone
        for i in jpegs:
            try:
                decoded[i] = _decode_jpegs(encoded[i], device)
            except RuntimeError:  # and the CPU decoder below says whether it is readable at all
                pass
    for i, data in enumerate(encoded):
        if i in decoded or data is None:
            continue
        try:
            decoded[i] = decode_image_bytes(data.numpy().tobytes(), grayscale=False, name=f"image {i}").to(device)
        except AttrnetError:
            continue
    order = sorted(decoded)
    ok[order] = True
    rows = dict(zip(order, resize_images([decoded[i] for i in order], size, resize)))
    blank = torch.zeros((3, *size), dtype=torch.uint8, device=device)
    # stacked in place (no index tensor: a copy of one to the GPU would wait for it)
    return torch.stack([rows.get(i, blank) for i in range(len(encoded))]) if encoded else blank[None][:0], ok
