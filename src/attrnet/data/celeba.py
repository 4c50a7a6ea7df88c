"""The official CelebA layout: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt.

list_attr_celeba.txt: line 1 the number of images, line 2 the attribute names, then one line per image:
its file name and one value per attribute, all separated by whitespace.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from attrnet.data.label_text import counted, read_label_text
from attrnet.data.provenance import read_provenance
from attrnet.data.table import AttributeTable
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
# CelebA writes 1 and -1; 0 marks an unknown label (some re-annotated copies use it).
VALUES = {"1": 1.0, "+1": 1.0, "-1": 0.0, "0": float("nan")}
SPLITS = {"0": 0, "1": 1, "2": 2}


def read_celeba(root: str | Path) -> AttributeTable:
    """Read CelebA's label file (values 1 / -1; 0 is read as unknown) and its partition if present."""
    root = Path(root)
    if not root.is_dir():
        raise AttrnetError(f"data folder not found: {root}")
    attr_path = root / ATTR_FILE
    if not attr_path.is_file():
        raise AttrnetError(f"{root}: no {ATTR_FILE}; a CelebA folder holds {IMAGE_DIR}/ and {ATTR_FILE}")
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise AttrnetError(f"{root}: no {IMAGE_DIR}/ folder of images")
    names, files, labels = _read_attr_file(attr_path)
    partition = _read_partition(root / PARTITION_FILE, files)
    return AttributeTable(image_dir=image_dir, files=files, names=names, labels=labels,
                          partition=partition, source=str(root), extra={"provenance": read_provenance(root)})


def _read_attr_file(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, image files, labels float32 [images, attributes])."""
    lines = read_label_text(path).split("\n")
    if len(lines) < 2:
        raise AttrnetError(f"{path}: expected a count line and a line of attribute names")
    count = _image_count(path, lines[0])
    names = _attribute_names(path, lines[1])
    files: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}  # image -> the line it is on
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise AttrnetError(f"{path}:{lineno}: the row has {counted(len(parts) - 1, 'value')} but line 2 "
                               f"names {counted(len(names), 'attribute')}; a row is a file name and one value "
                               f"(1, -1 or 0) per attribute")
        file = parts[0]
        if file in first_line:
            raise AttrnetError(f"{path}:{lineno}: image {file} is listed again (first on line "
                               f"{first_line[file]}); list each image once")
        first_line[file] = lineno
        try:
            rows.append([VALUES[v] for v in parts[1:]])
        except KeyError as exc:
            raise AttrnetError(f"{path}:{lineno}: value {exc.args[0]!r} is not 1, -1 or 0 (unknown)") from None
        files.append(file)
    if not files:
        raise AttrnetError(f"{path}: no label rows")
    if count != len(files):  # a cut-down copy often keeps the old count; a truncated download shows here too
        log.warning("%s: line 1 says %d images but the file lists %d", path, count, len(files))
    return names, files, np.asarray(rows, dtype=np.float32)


def _image_count(path: Path, line: str) -> int:
    count = line.strip()
    if not (count.isascii() and count.isdigit()):
        raise AttrnetError(f"{path}:1: expected the number of images, got {count[:40]!r}; the file starts "
                           f"with a count line, then a line of attribute names")
    return int(count)


def _attribute_names(path: Path, line: str) -> list[str]:
    names = line.split()
    if not names:
        raise AttrnetError(f"{path}:2: expected the attribute names, separated by spaces")
    column: dict[str, int] = {}
    for k, name in enumerate(names, start=1):
        if name in column:
            raise AttrnetError(f"{path}:2: attribute {name!r} is named twice (names {column[name]} and {k}); "
                               f"each attribute needs its own name")
        column[name] = k
    return names


def _read_partition(path: Path, files: list[str]) -> np.ndarray | None:
    """The official split of every labelled image (0 train, 1 val, 2 test), None without the file."""
    if not path.is_file():
        return None
    split: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(read_label_text(path).split("\n"), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in SPLITS:
            raise AttrnetError(f"{path}:{lineno}: expected 'file 0|1|2', got {line.strip()[:80]!r}")
        if parts[0] in first_line:
            raise AttrnetError(f"{path}:{lineno}: image {parts[0]} is listed again (first on line "
                               f"{first_line[parts[0]]}); list each image once")
        first_line[parts[0]] = lineno
        split[parts[0]] = SPLITS[parts[1]]
    missing = [f for f in files if f not in split]
    if missing:
        raise AttrnetError(f"{path}: no partition for {len(missing)} labelled images (first: {missing[0]})")
    return np.asarray([split[f] for f in files], dtype=np.int8)
