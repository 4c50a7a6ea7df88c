"""The bench's input: a CelebA-layout folder of synthetic JPEGs at CelebA's size, and the plain per-image
PIL pipeline the DataLoader loops read it with."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from attrnet.atomic import write_text
from attrnet.data.synthetic import ATTR_FILE, IMAGE_DIR, PARTITION_FILE, write_synthetic_celeba
from attrnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

CELEBA_40 = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
             "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
             "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
             "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
             "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
CELEBA_SIZE = (178, 218)   # width, height
DISTINCT_IMAGES = 512      # drawn once; the other files are hard links to them (drawing one takes ~15 ms)


def ensure_synthetic_celeba(folder: Path, n: int, n_attributes: int) -> Path:
    """A CelebA-layout folder of n 178x218 JPEGs with n_attributes random +-1 labels, all in the train split.

    DISTINCT_IMAGES faces are drawn once (beside folder); the n files are hard links to them (copies where the
    file system has no hard links). Labels are random (each attribute with its own positive rate): enough
    for throughput. Reused when it already holds the same n and attributes.
    """
    spec = {"version": 1, "n": n, "attributes": n_attributes, "distinct": min(n, DISTINCT_IMAGES),
            "size": list(CELEBA_SIZE)}
    marker = folder / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec and (folder / ATTR_FILE).is_file():
        return folder
    k = spec["distinct"]
    source = folder.parent / f"distinct-{CELEBA_SIZE[0]}x{CELEBA_SIZE[1]}-{k}"
    if not (source / ATTR_FILE).is_file():
        log.info("drawing %d distinct %dx%d faces into %s", k, *CELEBA_SIZE, source)
        write_synthetic_celeba(source, k, seed=0, size=CELEBA_SIZE)
    img_dir = folder / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n)))
    files = [f"{i + 1:0{width}d}.jpg" for i in range(n)]
    for i, name in enumerate(files):
        dst = img_dir / name
        if dst.exists():
            dst.unlink()
        src = source / IMAGE_DIR / f"{i % k + 1:06d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    names = CELEBA_40[:n_attributes] + [f"Attribute_{j + 1}" for j in range(len(CELEBA_40), n_attributes)]
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.05, 0.8, n_attributes)
    chunks = []
    for start in range(0, n, 10_000):  # in chunks: a few hundred thousand rows stay a few MB of text
        values = np.where(rng.random((min(10_000, n - start), n_attributes)) < rates, " 1", "-1")
        chunks.append("".join(f + " " + " ".join(row) + "\n" for f, row in zip(files[start:], values.tolist())))
    write_text(folder / PARTITION_FILE, "".join(f"{name} 0\n" for name in files))
    write_text(folder / ATTR_FILE, f"{n}\n{' '.join(names)}\n" + "".join(chunks))
    marker.write_text(json.dumps(spec))
    return folder


class PilFolder(torch.utils.data.Dataset):
    """The plain way: open each JPEG with PIL and run torchvision's transforms on it, one image at a time."""

    def __init__(self, paths: list[Path], labels: np.ndarray, transform):
        self.paths, self.labels, self.transform = paths, torch.as_tensor(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def pil_transform(size: int, flip: bool):
    steps = [transforms.Resize((size, size))]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
