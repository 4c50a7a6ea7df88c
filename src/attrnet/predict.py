"""Predicting folders of image files with an attrnet.inference.AttributeModel, to CSV, JSON or a table.

Files are decoded by DataLoader workers on the CPU (or read as raw bytes and decoded by the GPU's JPEG decoder
when the model runs on CUDA: attrnet.data.device_decode); everything after the pixels is the inference
package's own forward path.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from attrnet import atomic
from attrnet.data.device_decode import decode_batch
from attrnet.data.images import load_image
from attrnet.errors import AttrnetError


class _Files(Dataset):
    def __init__(self, paths, size, grayscale, resize, raw: bool):
        self.paths, self.size, self.grayscale, self.resize, self.raw = paths, size, grayscale, resize, raw

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        """(index, pixels or encoded bytes, None) or (index, None, why it could not be read)."""
        try:
            if self.raw:  # bytes only: the GPU decodes. A numpy array is pickled through the worker's pipe;
                # thousands of small tensors would each need a shared-memory file descriptor.
                return i, np.fromfile(self.paths[i], dtype=np.uint8), None
            return i, load_image(self.paths[i], self.size, self.grayscale, self.resize), None
        except AttrnetError as exc:  # the decoder's reason, naming the file
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
            return i, None, f"cannot read image {self.paths[i]}: {type(exc).__name__}: {exc}"


def _collate(items):
    return items


def iter_files(model, paths: list[Path], batch_size: int = 256, workers: int = 0,
               device_decode: bool | None = None) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[Path, str]]]]:
    """Yield (paths, probabilities, [(unreadable path, why)]) batch by batch, in input order.

    On a GPU (device_decode None: when the model runs on CUDA) the workers only read bytes and the model's
    device decodes them (data.device_decode); each batch's probabilities come back to the host without
    waiting: batch k is handed out after batch k + 1's decode and forward pass were launched, so reading,
    decoding and the network overlap."""
    info = model.info
    device = getattr(model, "device", torch.device("cpu"))
    if device_decode is None:
        device_decode = device.type == "cuda"
    gpu_decode = device_decode and not info.grayscale and getattr(model, "runtime", None) == "torch"
    workers = workers or min(8, os.cpu_count() or 1)
    loader = DataLoader(_Files(paths, info.image_size, info.grayscale, info.resize, gpu_decode),
                        batch_size=batch_size, num_workers=workers if len(paths) > batch_size else 0,
                        collate_fn=_collate)
    pending = None
    for items in loader:
        good = [(i, t) for i, t, why in items if why is None]
        bad = [(paths[i], why) for i, _, why in items if why is not None]
        if gpu_decode and good:
            batch, ok = decode_batch([torch.from_numpy(t) for _, t in good], info.image_size, info.resize, device)
            bad += [(paths[i], f"cannot decode image {paths[i]} (neither the device's decoder nor the CPU's)")
                    for (i, _), fine in zip(good, ok) if not fine]
            if not ok.all():  # rare: a file neither decoder could read leaves the batch
                good, batch = [g for g, fine in zip(good, ok) if fine], batch[torch.from_numpy(np.flatnonzero(ok))
                                                                              .to(device)]
        elif good:
            batch = torch.stack([t for _, t in good])
        current = _Pending([paths[i] for i, _ in good], _probabilities(model, batch) if good else None, bad,
                           len(info.attributes))
        if pending is not None:
            yield pending.result()
        pending = current
    if pending is not None:
        yield pending.result()


def _probabilities(model, batch: torch.Tensor):
    """The batch's probabilities: left on the device for a torch model (the copy back is _Pending's)."""
    if getattr(model, "runtime", None) == "torch":
        return torch.sigmoid(model.logits(batch))
    return model.probabilities(batch)


class _Pending:
    """One batch's results on their way to the host: from a GPU, copied into pinned memory without waiting, and
    waited for only when asked for."""

    def __init__(self, paths: list[Path], probs, bad: list[tuple[Path, str]], num_attributes: int):
        self.paths, self.bad, self.done = paths, bad, None
        if probs is None:
            probs = np.zeros((0, num_attributes))
        elif isinstance(probs, torch.Tensor) and probs.is_cuda:
            host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(torch.cuda.current_stream(probs.device))  # the copy's device, maybe not the current one
            probs = host
        self.probs = probs

    def result(self) -> tuple[list[Path], np.ndarray, list[tuple[Path, str]]]:
        if self.done is not None:
            self.done.synchronize()
        probs = self.probs.numpy() if isinstance(self.probs, torch.Tensor) else self.probs
        return self.paths, probs, self.bad


def check_output(out: str | Path | None) -> Path | None:
    """The output file's path, or an error before anything is loaded: CSV or JSON, by its suffix."""
    out = Path(out) if out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise AttrnetError(f"--out must end in .csv or .json, got {out}")
    return out


def csv_header(names: list[str]) -> list[str]:
    """The CSV columns of predict (and predict --ray): image, each attribute's probability, each decision."""
    return ["image"] + [f"{a}_prob" for a in names] + names


def csv_row(image: str, probs, decisions) -> list:
    return [image] + [f"{v:.5f}" for v in probs] + [int(d) for d in decisions]


def json_row(image: str, names: list[str], probs, decisions) -> dict:
    return {"image": image, "probabilities": dict(zip(names, map(float, probs))),
            "attributes": dict(zip(names, map(int, decisions)))}


def json_document(names: list[str], thresholds, rows: list[dict], unreadable) -> str:
    """The JSON file of predict (and predict --ray); unreadable: (image, why) pairs."""
    return json.dumps({"attributes": names, "thresholds": [float(t) for t in thresholds], "images": rows,
                       "unreadable": [{"image": str(b), "reason": why} for b, why in unreadable]}, indent=1)


def predict_to_file(model, paths: list[Path], out: str | Path | None,
                    batch_size: int = 256) -> tuple[int, list[tuple[Path, str]], list[dict]]:
    """Predict every image (find_images' list); write CSV (streamed) or JSON; returns (count, [(unreadable, why)],
    rows if no file)."""
    names = model.attributes
    rows: list[dict] = []
    bad_all: list[tuple[Path, str]] = []
    n = 0
    out = check_output(out)
    use_csv = out is not None and out.suffix.lower() == ".csv"
    with atomic.atomic_path(out) if out else contextlib.nullcontext() as tmp:
        fh = open(tmp, "w", newline="") if use_csv else None
        writer = csv.writer(fh) if fh else None
        if writer:
            writer.writerow(csv_header(names))
        for batch_paths, probs, bad in iter_files(model, paths, batch_size):
            bad_all += bad
            dec = model.decisions(probs)
            for p, pr, d in zip(batch_paths, probs, dec):
                n += 1
                if writer:
                    writer.writerow(csv_row(str(p), pr, d))
                else:
                    rows.append(json_row(str(p), names, pr, d))
        if fh:
            fh.close()
        if n == 0:  # raised inside the atomic write: no empty output file replaces anything
            raise AttrnetError(f"none of the {len(paths)} image(s) could be read: {bad_all[0][1]}")
        if out is not None and not use_csv:
            Path(tmp).write_text(json_document(names, model.thresholds, rows, bad_all))
    return n, bad_all, rows


PHOTOS_PER_CALL = 16  # photos decoded, searched and predicted together: memory stays a few photos' worth


@dataclass
class FaceOutcome:
    """predict_faces_to_file's tally: faces written, photos without a face, unreadable photos (with why), and the
    rows (for the terminal) when there is no output file."""

    faces: int = 0
    without_face: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def predict_faces_to_file(model, paths: list[Path], out: str | Path | None, batch_size: int = 64) -> FaceOutcome:
    """Every face of every photo (model.predict_faces), one row per face: CSV `image,face,x1,y1,x2,y2,face_score,
    <attr>_prob...,<attr>...` (faces numbered from 0, largest first; a photo without a face has no row), or JSON
    nested per image. Written atomically; a photo without a face or an unreadable one is counted, never fatal."""
    names = model.attributes
    out = check_output(out)
    tally = FaceOutcome(seconds=dict.fromkeys(("decode", "detect", "align", "model"), 0.0))
    use_csv = out is not None and out.suffix.lower() == ".csv"
    images: list[dict] = []
    with atomic.atomic_path(out) if out else contextlib.nullcontext() as tmp:
        fh = open(tmp, "w", newline="") if use_csv else None
        writer = csv.writer(fh) if fh else None
        if writer:
            writer.writerow(["image", "face", "x1", "y1", "x2", "y2", "face_score"] + [f"{a}_prob" for a in names]
                            + names)
        for start in range(0, len(paths), PHOTOS_PER_CALL):
            chunk = paths[start:start + PHOTOS_PER_CALL]
            result = model.predict_faces(chunk, batch_size=batch_size)
            for stage, s in result.seconds.items():
                tally.seconds[stage] += s
            tally.unreadable += [(chunk[i], why) for i, why in result.failed]
            tally.without_face += [chunk[i] for i in result.without_face]
            for path, faces in zip(chunk, result.faces):
                tally.faces += len(faces)
                if writer:
                    for j, f in enumerate(faces):
                        writer.writerow([str(path), j, *(f"{v:.1f}" for v in f["box"]), f"{f['score']:.4f}",
                                         *(f"{v:.5f}" for v in f["probabilities"]), *f["decisions"].tolist()])
                elif faces or out is None:
                    images.append({"image": str(path), "faces": [_face_json(f, names) for f in faces]})
        if fh:
            fh.close()
        if tally.unreadable and len(tally.unreadable) == len(paths):
            raise AttrnetError(f"none of the {len(paths)} image(s) could be read: {tally.unreadable[0][1]}")
        if out is not None and not use_csv:
            Path(tmp).write_text(json.dumps({
                "attributes": names, "thresholds": model.thresholds.tolist(), "images": images,
                "without_face": [str(p) for p in tally.without_face],
                "unreadable": [{"image": str(b), "reason": why} for b, why in tally.unreadable]}, indent=1))
    tally.rows = images if out is None else []
    return tally


def _face_json(face: dict, names: list[str]) -> dict:
    return {"box": [round(v, 1) for v in face["box"]], "score": round(face["score"], 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in face["landmarks"]],
            "probabilities": {a: round(float(p), 5) for a, p in zip(names, face["probabilities"])},
            "attributes": {a: int(d) for a, d in zip(names, face["decisions"])}}
