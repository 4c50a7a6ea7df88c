"""Reader for Animals with Attributes 2 (Xian et al.).

Layout: root/JPEGImages/<class>/*.jpg, root/classes.txt ("1\tantelope"), root/predicates.txt
("1\tblack"), root/predicate-matrix-binary.txt (classes x predicates of 0/1),
root/trainclasses.txt and root/testclasses.txt (one class name per line).

Every image takes the attribute row of its class. Images are ordered by class name, then file
name. Folders under JPEGImages that classes.txt does not list are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrnet.data.groups import AWA2_GROUPS, restrict_groups
from attrnet.data.label_text import read_label_text
from attrnet.data.table import TEST, TRAIN, VAL, AttributeTable
from attrnet.errors import AttrnetError

SPLITS = ("classes", "random")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _read_index_file(path: Path, what: str) -> list[str]:
    """Names from lines like '1\\tantelope' (the index is checked to count 1, 2, ...)."""
    if not path.is_file():
        raise AttrnetError(f"missing AwA2 {what} file {path}")
    names: list[str] = []
    for lineno, line in enumerate(read_label_text(path).split("\n"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise AttrnetError(f"{path}:{lineno}: expected '<index> <name>', got {line.strip()!r}")
        if int(parts[0]) != len(names) + 1:
            raise AttrnetError(f"{path}:{lineno}: index {parts[0]} out of order, expected {len(names) + 1}")
        names.append(parts[1])
    if not names:
        raise AttrnetError(f"AwA2 {what} file {path} is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AttrnetError(f"{path} repeats the name(s) {', '.join(dup)}")
    return names


def _read_class_list(path: Path, classes: list[str]) -> list[str]:
    """Class names, one a line, all of which must be in classes.txt."""
    if not path.is_file():
        raise AttrnetError(f"missing AwA2 class list {path} (needed for split='classes'; "
                           f"use split='random' without it)")
    names = [line.strip() for line in read_label_text(path).split("\n") if line.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise AttrnetError(f"{path} names class(es) not in classes.txt: {', '.join(unknown)}")
    return names


def _read_matrix(path: Path, n_classes: int, n_predicates: int) -> np.ndarray:
    """The binary predicate matrix, checked to be n_classes x n_predicates of 0/1."""
    if not path.is_file():
        raise AttrnetError(f"missing AwA2 predicate matrix {path}")
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise AttrnetError(f"cannot parse AwA2 predicate matrix {path}: {exc}") from exc
    if matrix.shape != (n_classes, n_predicates):
        raise AttrnetError(f"AwA2 predicate matrix {path} has shape {matrix.shape[0]} x "
                           f"{matrix.shape[1]}, expected {n_classes} classes x {n_predicates} "
                           f"predicates (from classes.txt and predicates.txt)")
    if not np.isin(matrix, (0.0, 1.0)).all():
        raise AttrnetError(f"AwA2 predicate matrix {path} holds values other than 0 and 1; "
                           f"use predicate-matrix-binary.txt, not the continuous matrix")
    return matrix


def _class_images(image_root: Path, cls: str) -> list[str]:
    """Sorted '<class>/<file>' paths of one class folder (error if missing or empty)."""
    folder = image_root / cls
    if not folder.is_dir():
        raise AttrnetError(f"missing AwA2 class folder {folder} (class '{cls}' of classes.txt)")
    files = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AttrnetError(f"AwA2 class folder {folder} holds no images (.jpg/.jpeg/.png)")
    return [f"{cls}/{f}" for f in files]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise AttrnetError(f"{name} must be in [0, 1), got {value}")


def read_awa2(root: Path, split: str = "classes", seed: int = 0, val_fraction: float = 0.1,
              test_fraction: float = 0.2) -> AttributeTable:
    """Read an AwA2 folder into an AttributeTable with 85 (or as many as listed) predicates.

    split="classes": the standard seen/unseen split: test classes' images are TEST, train classes'
    images are TRAIN except a seeded val_fraction of them (drawn over all train-class images) that
    are VAL. split="random": partition None; the caller draws a seeded random image split with
    val_fraction/test_fraction (test_fraction is only checked here). Per-image class names are in
    table.extra["classes"].
    """
    root = Path(root)
    if split not in SPLITS:
        raise AttrnetError(f"unknown AwA2 split '{split}'; valid splits: {', '.join(SPLITS)}")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if not root.is_dir():
        raise AttrnetError(f"AwA2 folder {root} does not exist")
    image_root = root / "JPEGImages"
    if not image_root.is_dir():
        raise AttrnetError(f"missing folder {image_root}: an AwA2 root holds JPEGImages/<class>/*.jpg")

    classes = _read_index_file(root / "classes.txt", "classes")
    predicates = _read_index_file(root / "predicates.txt", "predicates")
    matrix = _read_matrix(root / "predicate-matrix-binary.txt", len(classes), len(predicates))
    row = {c: i for i, c in enumerate(classes)}

    files: list[str] = []
    image_classes: list[str] = []
    for cls in sorted(classes):
        paths = _class_images(image_root, cls)
        files += paths
        image_classes += [cls] * len(paths)
    labels = matrix[[row[c] for c in image_classes]].astype(np.float32)

    extra: dict = {"classes": image_classes, "class_names": list(classes), "split": split}
    partition = None
    if split == "classes":
        train = _read_class_list(root / "trainclasses.txt", classes)
        test = _read_class_list(root / "testclasses.txt", classes)
        both = sorted(set(train) & set(test))
        if both:
            raise AttrnetError(f"class(es) {', '.join(both)} are in both trainclasses.txt and "
                               f"testclasses.txt")
        neither = [c for c in classes if c not in train and c not in test]
        if neither:
            raise AttrnetError(f"class(es) {', '.join(neither)} are in neither trainclasses.txt nor "
                               f"testclasses.txt in {root}")
        test_set = set(test)
        is_test = np.array([c in test_set for c in image_classes], dtype=bool)
        partition = np.where(is_test, TEST, TRAIN).astype(np.int8)
        train_idx = np.flatnonzero(~is_test)
        n_val = int(round(val_fraction * len(train_idx)))
        if n_val:
            rng = np.random.default_rng(seed)
            partition[rng.choice(train_idx, size=n_val, replace=False)] = VAL
        extra.update(train_classes=train, test_classes=test)

    return AttributeTable(image_dir=image_root, files=files, names=list(predicates),
                          labels=labels, partition=partition,
                          groups=restrict_groups(AWA2_GROUPS, predicates), source=str(root),
                          extra=extra)
