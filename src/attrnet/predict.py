"""Predicting folders of image files with an attrnet.inference.AttributeModel, to CSV, JSON or a table.

Files are decoded by DataLoader workers on the CPU (or as raw bytes handed to the GPU's JPEG decoder when
the model runs on CUDA); everything after the pixels is the inference package's own forward path.
"""

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
from attrnet.data.images import load_image, resize_image, resize_images
from attrnet.errors import AttrnetError

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
        except Exception:  # noqa: BLE001 - any unreadable file is reported, never fatal
            return i, None, False


def _collate(items):
    return items


def iter_files(model, paths: list[Path], batch_size: int = 256,
               workers: int = 0) -> Iterator[tuple[list[Path], np.ndarray, list[Path]]]:
    """Yield (paths, probabilities, unreadable paths) batch by batch, in input order."""
    info = model.info
    gpu_decode = getattr(model, "device", torch.device("cpu")).type == "cuda" and not info.grayscale
    workers = workers or min(8, os.cpu_count() or 1)
    loader = DataLoader(_Files(paths, info.image_size, info.grayscale, info.resize, gpu_decode),
                        batch_size=batch_size, num_workers=workers if len(paths) > batch_size else 0,
                        collate_fn=_collate)
    for items in loader:
        good = [(i, t) for i, t, ok in items if ok]
        bad = [paths[i] for i, _, ok in items if not ok]
        if gpu_decode and good:
            good, more_bad = _decode_on_gpu([(i, torch.from_numpy(t)) for i, t in good], info, model.device)
            bad += [paths[i] for i in more_bad]
        if not good:
            yield [], np.zeros((0, len(info.attributes))), bad
            continue
        batch = torch.stack([t for _, t in good])
        yield [paths[i] for i, _ in good], model.probabilities(batch), bad


def _decode_on_gpu(items, info, device):
    """Batched nvjpeg decode, then resize on the GPU; files nvjpeg refuses fall back to the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from attrnet.data.images import decode_image_bytes
    ok, bad = [], []
    jpegs = [(i, t) for i, t in items if t[:2].tolist() == [0xFF, 0xD8]]
    others = [(i, t) for i, t in items if t[:2].tolist() != [0xFF, 0xD8]]
    if jpegs:
        try:
            decoded = decode_jpeg([t for _, t in jpegs], mode=ImageReadMode.RGB, device=device)
            resized = resize_images(decoded, info.image_size, info.resize)
            ok += [(i, img) for (i, _), img in zip(jpegs, resized)]
        except RuntimeError:
            others += jpegs
    for i, data in others:  # the CPU decoder that checks headers (torchvision's PNG decoder can crash)
        try:
            img = decode_image_bytes(data.numpy().tobytes(), info.grayscale)
            ok.append((i, resize_image(img, info.image_size, info.resize).to(device)))
        except AttrnetError:
            bad.append(i)
    return ok, bad


def predict_to_file(model, inputs: list[str], out: str | Path | None,
                    batch_size: int = 256) -> tuple[int, list[Path], list[dict]]:
    """Predict every image; write CSV (streamed) or JSON; returns (count, unreadable, rows if no file)."""
    paths = find_images(inputs)
    names = model.attributes
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
        for batch_paths, probs, bad in iter_files(model, paths, batch_size):
            bad_all += bad
            dec = model.decisions(probs)
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
            Path(tmp).write_text(json.dumps({"attributes": names, "thresholds": model.thresholds.tolist(),
                                             "images": rows, "unreadable": [str(b) for b in bad_all]}, indent=1))
    return n, bad_all, rows
