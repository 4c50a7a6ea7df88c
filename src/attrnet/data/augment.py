"""Batch augmentation and normalisation on the batch's device: no per-image Python work."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from attrnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def augment(x: torch.Tensor, flip: bool, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flips and random translations (edge-padded) of a uint8 batch [B, C, H, W]."""
    b, _, h, w = x.shape
    if flip:
        mask = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    pad_h, pad_w = int(round(shift * h)), int(round(shift * w))
    if pad_h or pad_w:
        # Pad once, then gather each image's window at its own random offset.
        padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="replicate") if x.is_floating_point() \
            else F.pad(x.float(), (pad_w, pad_w, pad_h, pad_h), mode="replicate").to(x.dtype)
        dy = torch.randint(0, 2 * pad_h + 1, (b,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * pad_w + 1, (b,), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # [B, 1, H, 1]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # [B, 1, 1, W]
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    return x


def random_affine(x: torch.Tensor, flip: bool, shift: float, scale: float,
                  generator: torch.Generator | None = None, crop_scale: float = 1.0,
                  crop_ratio: float = 1.0) -> torch.Tensor:
    """Flips, translations, zooms and random resized crops of a float batch in one batched resampling
    (grid_sample, border pixels repeated).

    scale: zoom in by up to this fraction of the side. crop_scale < 1 or crop_ratio > 1: a random resized
    crop instead of the zoom (torchvision's RandomResizedCrop, per image on the device): a window of
    U(crop_scale, 1) of the image's area and aspect ratio (relative to the image's) log-uniform in
    [1/crop_ratio, crop_ratio] as far as such a window fits, at a uniform position inside the image, resized to
    the image's size; shift still moves it by up to `shift`."""
    b = x.shape[0]
    dev = x.device
    crop = crop_scale < 1.0 or crop_ratio > 1.0
    u = torch.rand(b, 7 if crop else 4, device=dev, generator=generator)
    sign = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    if crop:
        area = crop_scale + (1.0 - crop_scale) * u[:, 1]
        # the aspect ratio, log-uniform over the part of [1/crop_ratio, crop_ratio] where a window of this area
        # fits inside the image (ratio in [area, 1/area]): the area is always the one drawn
        lo = torch.clamp(area.log(), min=-math.log(crop_ratio))
        ratio = torch.exp(lo + (-2 * lo) * u[:, 4])
        sx, sy = (area * ratio).sqrt(), (area / ratio).sqrt()   # the window's width and height / the image's
        # the window's centre, uniform where the window stays inside the image, then moved by the shift
        tx = (u[:, 2] * 2 - 1) * (1 - sx) + (u[:, 5] * 2 - 1) * 2 * shift
        ty = (u[:, 3] * 2 - 1) * (1 - sy) + (u[:, 6] * 2 - 1) * 2 * shift
    else:
        sx = sy = 1.0 / (1.0 + scale * u[:, 1])        # < 1: sample a smaller window = zoom in
        tx, ty = (u[:, 2] * 2 - 1) * 2 * shift, (u[:, 3] * 2 - 1) * 2 * shift
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and saturation of a batch on the 0-255 scale (float out), each image its
    own factors, each factor uniform in [1 - strength, 1 + strength] (torchvision's ColorJitter(b, c, s) in
    a fixed order). Grey images (one channel) get brightness and contrast only."""
    b, c = x.shape[:2]
    f = 1.0 + (torch.rand(b, 3, 1, 1, 1, device=x.device, generator=generator) * 2 - 1) * strength
    x = x.float() * f[:, 0]
    mean_grey = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean_grey) * f[:, 1] + mean_grey
    if c == 3:
        grey = _grey(x)
        x = (x - grey) * f[:, 2] + grey
    return x.clamp(0.0, 255.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] luma (ITU-R 601, as torchvision's rgb_to_grayscale); a grey batch is its own."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


AUTO_AUGMENTS = ("none", "trivial", "randaugment")


def auto_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """torchvision's TrivialAugmentWide or RandAugment (2 ops, magnitude 9) on a uint8 batch, each image its
    own draw (the transforms draw from torch's global generator, which the engine seeds per epoch). A loop
    over the images: torchvision's transforms give a whole batch one draw. On a GPU this is the one training
    option that makes the step wait for the device (the ops build small tensors from host values per image);
    tests/test_host_sync.py leaves it out for that reason."""
    if policy == "none":
        return x
    from torchvision.transforms import v2
    op = v2.TrivialAugmentWide() if policy == "trivial" else v2.RandAugment(num_ops=2, magnitude=9)
    return torch.stack([op(img) for img in x])


@functools.lru_cache(maxsize=None)
def _statistics(device: torch.device, channels: int, mean: tuple = IMAGENET_MEAN,
                std: tuple = IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as [C, 1, 1] tensors on `device`, made once: a tensor built from Python numbers on a GPU
    is a blocking host-to-device copy, i.e. a host sync on every call. Grey images (one channel) get the
    mean of the three channels' statistics."""
    if channels != len(mean):
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return (torch.tensor(mean, device=device)[:, None, None] * 255.0,
            torch.tensor(std, device=device)[:, None, None] * 255.0)


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32, channels_last: bool = False,
              mean=None, std=None) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float, scaled to [0, 1] and standardised with the backbone weights' mean and std
    (RGB, 0-1 scale; a backbone's `normalization`), ImageNet's when not given."""
    mean, std = _statistics(x.device, x.shape[1], tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))
    out = (x.float() - mean) / std
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(dtype)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend a float batch and its targets with the permuted batch: lam * a + (1 - lam) * a[perm].

    An unknown target (NaN) on either side stays unknown in the blend, so it is still left out of the loss.
    """
    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm]


def cutmix_box(h: int, w: int, lam: float, rng) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of CutMix's box (Yun et al. 2019) for the weight lam: a window of about
    (1 - lam) of the image's area, centred uniformly and clipped to the image; rng: a numpy Generator."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return max(cy - ch // 2, 0), min(cy + ch - ch // 2, h), max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)


def cutmix(x: torch.Tensor, y: torch.Tensor, box: tuple[int, int, int, int],
           perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the box of the permuted batch into each image; the targets are blended by the pasted area's
    share (multi-label CutMix: an attribute's target is the share of the image that comes from each side).
    Unknown targets stay unknown, as in mixup."""
    top, bottom, left, right = box
    keep = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
    out = x.clone()
    out[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    return out, keep * y + (1.0 - keep) * y[perm]
