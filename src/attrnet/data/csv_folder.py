"""A generic layout: a folder of images and a CSV `image,attrA,attrB,...`.

Values 1/0 or 1/-1 (also true/false, yes/no); blank, NaN or ? = unknown. The file must be UTF-8 text.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from attrnet.data.label_text import counted, read_label_text
from attrnet.data.provenance import read_provenance
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
    records = _records(path)
    header = next(records, None)
    if header is None or len(header[1]) < 2:
        raise AttrnetError(f"{path}: the first line must be a header 'image,attrA,attrB,...'")
    names = _attribute_names(path, header[1])
    files: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}  # image -> the line its row starts on
    for lineno, row in records:
        if all(not c.strip() for c in row):
            continue
        if len(row) != len(names) + 1:
            raise AttrnetError(f"{path}:{lineno}: the row has {counted(len(row) - 1, 'value')} but the header "
                               f"names {counted(len(names), 'attribute')}; a row is an image name and one value "
                               f"per attribute")
        file = row[0].strip()
        if not file:
            raise AttrnetError(f"{path}:{lineno}: the row has no image name in its first column")
        if file in first_line:
            raise AttrnetError(f"{path}:{lineno}: image {file} is listed again (first on line "
                               f"{first_line[file]}); list each image once")
        first_line[file] = lineno
        rows.append([_parse(v, path, lineno) for v in row[1:]])
        files.append(file)
    if not files:
        raise AttrnetError(f"{path}: no label rows")
    return AttributeTable(image_dir=root, files=files, names=names,
                          labels=np.asarray(rows, dtype=np.float32), source=str(path),
                          extra={"provenance": read_provenance(root)})


def _records(path: Path):
    """(line the record starts on, its fields) for every CSV record; a quoted field may span lines, so
    the line is counted, not the record."""
    reader = csv.reader(io.StringIO(read_label_text(path), newline=""))
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise AttrnetError(f"{path}:{start}: not a valid CSV record ({exc})") from None
        yield start, row


def _attribute_names(path: Path, header: list[str]) -> list[str]:
    names = [h.strip() for h in header[1:]]
    column: dict[str, int] = {}
    for k, name in enumerate(names, start=2):
        if not name:
            raise AttrnetError(f"{path}:1: column {k} of the header has no attribute name "
                               f"(a trailing comma?); every column after the first names an attribute")
        if name in column:
            raise AttrnetError(f"{path}:1: attribute {name!r} is named twice in the header (columns "
                               f"{column[name]} and {k}); each attribute needs its own name")
        column[name] = k
    return names


def _parse(value: str, path: Path, lineno: int) -> float:
    v = value.strip().lower()
    if v in POSITIVE:
        return 1.0
    if v in NEGATIVE:
        return 0.0
    if v in UNKNOWN:
        return float("nan")
    raise AttrnetError(f"{path}:{lineno}: label {value!r} is not 1, 0, -1 or blank")
