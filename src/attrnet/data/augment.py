"""Batch augmentation and normalisation on the batch's device: no per-image Python work."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Flips, translations and zooms of a float batch in one batched resampling (grid_sample)."""
    b = x.shape[0]
    dev = x.device
    u = torch.rand(b, 4, device=dev, generator=generator)
    sign = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    zoom = 1.0 / (1.0 + scale * u[:, 1])               # < 1: sample a smaller window = zoom in
    tx, ty = (u[:, 2] * 2 - 1) * 2 * shift, (u[:, 3] * 2 - 1) * 2 * shift
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = zoom * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = zoom, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


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
