"""Aligning a face to a template: the 5-point similarity transform and the warp into the template's frame.

Coordinates are continuous image coordinates, x to the right and y down, pixel (i, j) covering [j, j+1) x
[i, i+1) (its centre at j + 0.5, i + 0.5), as the detector gives landmarks and torch's grid_sample with
align_corners=False reads them; a transform is a 2 x 3 matrix M with [x', y'] = M @ [x, y, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity (rotation, uniform scale, translation; no reflection) taking points src [n, 2] closest to
    dst [n, 2] in least squares (Umeyama 1991): 2 x 3, float64."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map would mirror: the nearest rotation
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    var = (s ** 2).sum() / len(src)
    scale = (sv * sign).sum() / var if var > 0 else 1.0
    shift = mu_d - scale * rotation @ mu_s
    return np.concatenate([scale * rotation, shift[:, None]], axis=1)


def apply_transform(M: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [n, 2] mapped by the 2 x 3 transform M."""
    points = np.asarray(points, np.float64)
    return points @ M[:, :2].T + M[:, 2]


def invert_transform(M: np.ndarray) -> np.ndarray:
    A = np.linalg.inv(M[:, :2])
    return np.concatenate([A, -A @ M[:, 2:]], axis=1)


def warp_faces(image: torch.Tensor, transforms: list[np.ndarray], frame: tuple[int, int]) -> torch.Tensor:
    """The faces of one image [C, H, W] (uint8), each taken into the template's frame (height, width) by its
    transform (image -> frame), bilinear, outside the image black: uint8 [F, C, height, width].

    Each face reads only the part of the image its frame covers; where the frame is less than half the face's
    size in the image (a large face in a large photo), that part is first shrunk with antialiasing to about the
    frame's resolution, so the bilinear warp does not alias."""
    fh, fw = frame
    faces = [_warp_one(image, np.asarray(M, np.float64), fh, fw) for M in transforms]
    return torch.stack(faces) if faces else torch.zeros((0, image.shape[0], fh, fw), dtype=torch.uint8)


def _warp_one(image: torch.Tensor, M: np.ndarray, fh: int, fw: int) -> torch.Tensor:
    _, h, w = image.shape
    corners = apply_transform(invert_transform(M), np.array([[0, 0], [fw, 0], [0, fh], [fw, fh]], np.float64))
    x0, y0 = (max(0, int(np.floor(v)) - 2) for v in corners.min(0))
    x1, y1 = min(w, int(np.ceil(corners[:, 0].max())) + 2), min(h, int(np.ceil(corners[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:  # the frame lies outside the image: all black
        return torch.zeros((image.shape[0], fh, fw), dtype=torch.uint8)
    crop = image[:, y0:y1, x0:x1]
    fx = fy = 1.0
    scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))  # frame pixels per image pixel
    if scale < 0.5:
        ch, cw = crop.shape[-2:]
        size = [max(1, round(ch * scale * 1.25)), max(1, round(cw * scale * 1.25))]
        crop = TF.resize(crop, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        fy, fx = size[0] / ch, size[1] / cw
    # the crop's coordinates: image x = x0 + x_crop / fx, so frame = M @ [[1/fx, 0, x0], [0, 1/fy, y0], [0, 0, 1]]
    to_crop = np.array([[1 / fx, 0, x0], [0, 1 / fy, y0], [0, 0, 1]], np.float64)
    back = invert_transform(M @ to_crop)                                      # frame -> crop
    ch, cw = crop.shape[-2:]
    ys, xs = np.meshgrid(np.arange(fh) + 0.5, np.arange(fw) + 0.5, indexing="ij")
    pts = np.stack([xs, ys], -1).reshape(-1, 2) @ back[:, :2].T + back[:, 2]  # crop coordinates of each centre
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the crop's outer edges
    grid = torch.from_numpy(np.stack([pts[:, 0] / cw * 2 - 1, pts[:, 1] / ch * 2 - 1], -1).reshape(1, fh, fw, 2))
    out = F.grid_sample(crop.float().unsqueeze(0), grid.float(), mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)
