"""`attrnet data align`: a folder of ordinary photos made into aligned face crops, like CelebA's aligned set, so a
face model can be trained on one's own photos.

Each photo's largest face is aligned to CelebA's template in its 178 x 218 frame and written as JPEG; photos
without a face are listed in no_face.txt and photos with several in several_faces.txt (the others are not
written), never silently dropped. With labels (a CSV `image,attrA,...` naming the photos), the rows of the photos
that gave a face are written beside the crops: labels.csv (layout csv) or list_attr_celeba.txt (layout celeba:
1, -1, and 0 for unknown). attrnet-data.json says the crops are aligned faces and to which template, so a
model trained on them predicts on photos with `predict --faces auto`. The folder is built under a temporary
name and appears complete, or not at all.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from attrnet import atomic
from attrnet.data.csv_folder import read_csv_folder
from attrnet.data.images import find_images, load_pixels
from attrnet.data.provenance import write_provenance
from attrnet.errors import AttrnetError
from attrnet.faces.align import similarity_transform, warp_faces
from attrnet.faces.detect import FaceDetector
from attrnet.faces.template import CELEBA_FRAME, CELEBA_TEMPLATE

LAYOUTS = ("csv", "celeba")
CHUNK = 16  # photos searched together


@dataclass
class AlignReport:
    written: int = 0
    no_face: list[str] = field(default_factory=list)
    several: list[tuple[str, int]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def align_folder(src: str | Path, out: str | Path, labels: str | None = None, layout: str = "csv",
                 overwrite: bool = False, device: str = "cpu") -> AlignReport:
    """Write the aligned crops of the photos under src into the new folder out (see the module doc)."""
    src, out = Path(src), Path(out)
    if layout not in LAYOUTS:
        raise AttrnetError(f"unknown --layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AttrnetError(f"--out {out} exists and is not empty; choose a new folder or add --overwrite")
    table = read_csv_folder(src, labels) if labels else None
    photos = table.paths if table is not None else find_images([src])
    names = [str(p.relative_to(src)) if p.is_relative_to(src) else p.name for p in photos]
    detector = FaceDetector(device)
    staging = out.with_name(f".{out.name}.align.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    image_dir = staging / ("img_align_celeba" if layout == "celeba" else "images")
    image_dir.mkdir(parents=True)
    report, kept = AlignReport(), []
    try:
        for start in range(0, len(photos), CHUNK):
            _align_chunk(photos[start:start + CHUNK], names[start:start + CHUNK], detector, image_dir, report, kept,
                         layout)
        _write_lists(staging, report)
        if table is not None:
            _write_labels(staging, table, kept, layout)
        write_provenance(staging, {"dataset": "aligned_faces", "input": "aligned_face",
                                   "description": "faces found in photos and aligned to CelebA's template",
                                   "made_by": f"attrnet data align {src}", "face_frame": list(CELEBA_FRAME),
                                   "face_template": [list(p) for p in CELEBA_TEMPLATE]})
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _align_chunk(photos, names, detector, image_dir, report, kept, layout) -> None:
    pixels, ok = [], []
    for path, name in zip(photos, names):
        try:
            pixels.append(load_pixels(path))
            ok.append(name)
        except AttrnetError as exc:
            report.unreadable.append((name, str(exc)))
    for name, img, faces in zip(ok, pixels, detector.detect(pixels)):
        if not faces:
            report.no_face.append(name)
            continue
        if len(faces) > 1:
            report.several.append((name, len(faces)))
        M = similarity_transform(faces[0].landmarks, np.asarray(CELEBA_TEMPLATE))
        crop = warp_faces(img, [M], CELEBA_FRAME)[0]
        index = len(kept) + 1
        file = f"{index:06d}.jpg" if layout == "celeba" else f"{Path(name).with_suffix('').as_posix()}.jpg"
        target = image_dir / file
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop.permute(1, 2, 0).numpy()).save(target, "JPEG", quality=95)
        kept.append((name, file))
        report.written += 1


def _write_lists(folder: Path, report: AlignReport) -> None:
    atomic.write_text(folder / "no_face.txt", "".join(f"{n}\n" for n in report.no_face))
    atomic.write_text(folder / "several_faces.txt", "".join(f"{n} {k}\n" for n, k in report.several))
    if report.unreadable:
        atomic.write_text(folder / "unreadable.txt", "".join(f"{n}\t{why}\n" for n, why in report.unreadable))


def _write_labels(folder: Path, table, kept: list[tuple[str, str]], layout: str) -> None:
    row_of = {f: i for i, f in enumerate(table.files)}
    rows = [(file, table.labels[row_of[name]]) for name, file in kept]
    if layout == "celeba":
        lines = [str(len(rows)), " ".join(table.names)]
        lines += [file + " " + " ".join("0" if math.isnan(v) else ("1" if v else "-1") for v in values)
                  for file, values in rows]
        atomic.write_text(folder / "list_attr_celeba.txt", "\n".join(lines) + "\n")
        return
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", *table.names])
    for file, values in rows:
        writer.writerow([f"images/{file}", *("" if math.isnan(v) else int(v) for v in values)])
    atomic.write_text(folder / "labels.csv", buf.getvalue())
