"""A generic layout: a folder of images and a CSV `image,attrA,attrB,...`.

Values 1/0 or 1/-1 (also true/false, yes/no); blank, NaN or ? = unknown.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from attrnet.data.table import AttributeTable
from attrnet.errors import AttrnetError

POSITIVE = {"1", "1.0", "true", "yes", "y"}
NEGATIVE = {"0", "0.0", "-1", "-1.0", "false", "no", "n"}
UNKNOWN = {"", "nan", "na", "?", "none", "null"}


def read_csv_folder(root: str | Path, labels: str | Path = "labels.csv") -> AttributeTable:
    """Read `root/labels` (or an absolute labels path); image paths in the CSV are relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise AttrnetError(f"data folder not found: {root}")
    path = Path(labels) if Path(labels).is_absolute() else root / labels
    if not path.is_file():
        raise AttrnetError(f"label file not found: {path} (set data.labels to the CSV's name)")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise AttrnetError(f"{path}: the first line must be a header 'image,attrA,attrB,...'")
        names = [h.strip() for h in header[1:]]
        files, rows = [], []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise AttrnetError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            files.append(row[0].strip())
            rows.append([_parse(v, path, lineno) for v in row[1:]])
    if not files:
        raise AttrnetError(f"{path}: no label rows")
    return AttributeTable(image_dir=root, files=files, names=names,
                          labels=np.asarray(rows, dtype=np.float32), source=str(path))


def _parse(value: str, path: Path, lineno: int) -> float:
    v = value.strip().lower()
    if v in POSITIVE:
        return 1.0
    if v in NEGATIVE:
        return 0.0
    if v in UNKNOWN:
        return float("nan")
    raise AttrnetError(f"{path}:{lineno}: label {value!r} is not 1, 0, -1 or blank")
