"""The official CelebA layout: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrnet.data.table import AttributeTable
from attrnet.errors import AttrnetError

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"


def read_celeba(root: str | Path) -> AttributeTable:
    """Read CelebA's label file (values 1 / -1; 0 or blank is read as unknown) and its partition if present."""
    root = Path(root)
    if not root.is_dir():
        raise AttrnetError(f"data folder not found: {root}")
    attr_path = root / ATTR_FILE
    if not attr_path.is_file():
        raise AttrnetError(f"{root}: no {ATTR_FILE}; a CelebA folder holds {IMAGE_DIR}/ and {ATTR_FILE}")
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise AttrnetError(f"{root}: no {IMAGE_DIR}/ folder of images")
    lines = attr_path.read_text().splitlines()
    if len(lines) < 2:
        raise AttrnetError(f"{attr_path}: expected a count line and a line of attribute names")
    names = lines[1].split()
    files, rows = [], []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise AttrnetError(f"{attr_path}:{lineno}: expected a file name and {len(names)} values, "
                               f"got {len(parts)} fields")
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            raise AttrnetError(f"{attr_path}:{lineno}: values must be 1 or -1, got {line.strip()[:80]!r}") from None
        if any(v not in (1, -1, 0) for v in values):
            raise AttrnetError(f"{attr_path}:{lineno}: values must be 1 or -1, got {line.strip()[:80]!r}")
        files.append(parts[0])
        rows.append(values)
    if not files:
        raise AttrnetError(f"{attr_path}: no label rows")
    raw = np.asarray(rows, dtype=np.float32)
    labels = np.where(raw == 1, 1.0, np.where(raw == -1, 0.0, np.nan)).astype(np.float32)
    partition = _read_partition(root / PARTITION_FILE, files)
    return AttributeTable(image_dir=image_dir, files=files, names=names, labels=labels,
                          partition=partition, source=str(root))


def _read_partition(path: Path, files: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    split = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise AttrnetError(f"{path}:{lineno}: expected 'file 0|1|2', got {line.strip()[:80]!r}")
        split[parts[0]] = int(parts[1])
    missing = [f for f in files if f not in split]
    if missing:
        raise AttrnetError(f"{path}: no partition for {len(missing)} labelled images (first: {missing[0]})")
    return np.asarray([split[f] for f in files], dtype=np.int8)
