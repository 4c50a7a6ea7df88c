"""Predictor: a trained checkpoint turned into per-attribute probabilities and 0/1 decisions."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from attrnet import atomic
from attrnet.data.augment import normalize
from attrnet.data.images import load_image, resize_image, resize_images
from attrnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
from attrnet.engine.setup import resolve_device
from attrnet.errors import AttrnetError
from attrnet.models.build import AttributeNet

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


class _Files(Dataset):
    def __init__(self, paths, size, grayscale, resize, raw: bool):
        self.paths, self.size, self.grayscale, self.resize, self.raw = paths, size, grayscale, resize, raw

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            if self.raw:  # bytes only: the GPU decodes. A numpy array is pickled through the worker's pipe;
                # thousands of small tensors would each need a shared-memory file descriptor.
                return i, np.fromfile(self.paths[i], dtype=np.uint8), True
            return i, load_image(self.paths[i], self.size, self.grayscale, self.resize), True
        except Exception:
            return i, None, False


def _collate(items):
    return items


class Predictor:
    """`Predictor.from_checkpoint(path).predict(paths)` -> probabilities [N, M]."""

    def __init__(self, model: AttributeNet, attributes: list[str], thresholds: np.ndarray,
                 image_size: tuple[int, int], grayscale: bool, resize: str, device: torch.device):
        self.model = model.to(device).eval()
        self.attributes, self.thresholds = attributes, np.asarray(thresholds, dtype=np.float64)
        self.image_size, self.grayscale, self.resize, self.device = image_size, grayscale, resize, device
        self.bf16 = device.type == "cuda"
        if self.bf16:
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", tta: str | None = None) -> "Predictor":
        """tta: none | flip | flip_shift overrides the run's test-time augmentation (None keeps it)."""
        ckpt = load_checkpoint(path)
        names = list(ckpt["attributes"])
        model = model_from_checkpoint(ckpt, tta)
        thresholds = np.asarray(ckpt.get("thresholds") or [0.5] * len(names))
        return cls(model, names, thresholds, tuple(ckpt["image_size"]), ckpt["grayscale"],
                   ckpt.get("resize", "squash"), resolve_device(device))

    @torch.no_grad()
    def predict_tensor(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Probabilities for a uint8 batch [B, C, H, W] already at the model's size."""
        x = normalize(images_uint8.to(self.device, non_blocking=True), channels_last=self.bf16)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return torch.sigmoid(self.model(x).float())

    def iter_predict(self, paths: list[Path], batch_size: int = 256,
                     workers: int = 0) -> Iterator[tuple[list[Path], np.ndarray, list[Path]]]:
        """Yield (paths, probabilities, unreadable paths) batch by batch, in input order."""
        gpu_decode = self.device.type == "cuda" and not self.grayscale
        workers = workers or min(8, os.cpu_count() or 1)
        loader = DataLoader(_Files(paths, self.image_size, self.grayscale, self.resize, gpu_decode),
                            batch_size=batch_size, num_workers=workers if len(paths) > batch_size else 0,
                            collate_fn=_collate)
        for items in loader:
            good = [(i, t) for i, t, ok in items if ok]
            bad = [paths[i] for i, _, ok in items if not ok]
            if gpu_decode and good:
                good, more_bad = self._decode_on_gpu([(i, torch.from_numpy(t)) for i, t in good])
                bad += [paths[i] for i in more_bad]
            if not good:
                yield [], np.zeros((0, len(self.attributes))), bad
                continue
            batch = torch.stack([t for _, t in good])
            yield [paths[i] for i, _ in good], self.predict_tensor(batch).cpu().numpy(), bad

    def _decode_on_gpu(self, items):
        """Batched nvjpeg decode, then resize on the GPU; files nvjpeg refuses fall back to the CPU."""
        from torchvision.io import ImageReadMode, decode_jpeg
        ok, bad = [], []
        jpegs = [(i, t) for i, t in items if t[:2].tolist() == [0xFF, 0xD8]]
        others = [(i, t) for i, t in items if t[:2].tolist() != [0xFF, 0xD8]]
        if jpegs:
            try:
                decoded = decode_jpeg([t for _, t in jpegs], mode=ImageReadMode.RGB, device=self.device)
                resized = resize_images(decoded, self.image_size, self.resize)
                ok += [(i, img) for (i, _), img in zip(jpegs, resized)]
            except RuntimeError:
                others += jpegs
        for i, data in others:
            try:
                from torchvision.io import decode_image
                img = decode_image(data, mode=ImageReadMode.RGB)
                ok.append((i, resize_image(img, self.image_size, self.resize).to(self.device)))
            except Exception:
                bad.append(i)
        return ok, bad

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        return (probs >= self.thresholds).astype(np.int64)


def predict_to_file(predictor: Predictor, inputs: list[str], out: str | Path | None,
                    batch_size: int = 256) -> tuple[int, list[Path], list[dict]]:
    """Predict every image; write CSV (streamed) or JSON; returns (count, unreadable, rows if no file)."""
    paths = find_images(inputs)
    names = predictor.attributes
    rows: list[dict] = []
    bad_all: list[Path] = []
    n = 0
    out = Path(out) if out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise AttrnetError(f"--out must end in .csv or .json, got {out}")
    use_csv = out is not None and out.suffix.lower() == ".csv"
    with atomic.atomic_path(out) if out else contextlib.nullcontext() as tmp:
        fh = open(tmp, "w", newline="") if use_csv else None
        writer = csv.writer(fh) if fh else None
        if writer:
            writer.writerow(["image"] + [f"{a}_prob" for a in names] + names)
        for batch_paths, probs, bad in predictor.iter_predict(paths, batch_size):
            bad_all += bad
            dec = predictor.decisions(probs)
            for p, pr, d in zip(batch_paths, probs, dec):
                n += 1
                if writer:
                    writer.writerow([str(p)] + [f"{v:.5f}" for v in pr] + d.tolist())
                else:
                    rows.append({"image": str(p), "probabilities": dict(zip(names, map(float, pr))),
                                 "attributes": dict(zip(names, map(int, d)))})
        if fh:
            fh.close()
        if n == 0:  # raised inside the atomic write: no empty output file replaces anything
            raise AttrnetError(f"none of the {len(paths)} image(s) could be read, e.g. {bad_all[0]}")
        if out is not None and not use_csv:
            Path(tmp).write_text(json.dumps({"attributes": names, "thresholds": predictor.thresholds.tolist(),
                                             "images": rows, "unreadable": [str(b) for b in bad_all]}, indent=1))
    return n, bad_all, rows
