"""One entry point for every on-disk format: read_table(DataConfig) -> AttributeTable."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from attrnet.data.awa2 import read_awa2
from attrnet.data.celeba import read_celeba
from attrnet.data.clothing import read_clothing
from attrnet.data.csv_folder import read_csv_folder
from attrnet.data.table import SPLIT_IDS, AttributeTable
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)


READERS: dict[str, Callable[..., AttributeTable]] = {
    "celeba": lambda d: read_celeba(d.root),
    "csv": lambda d: read_csv_folder(d.root, d.labels),
    "clothing": lambda d: read_clothing(Path(d.root)),
    "awa2": lambda d: read_awa2(Path(d.root), split=d.awa2_split, seed=d.split_seed, val_fraction=d.val_fraction,
                                test_fraction=d.test_fraction),
}


FORMATS = tuple(READERS)


def read_table(data, check_files: bool = True) -> AttributeTable:
    """Read the folder data.root in format data.format; every labelled image must exist."""
    readers = READERS
    if data.format not in readers:
        raise AttrnetError(f"unknown data.format {data.format!r}; valid formats: {', '.join(readers)}")
    table = readers[data.format](data)
    if check_files:
        check_images_exist(table)
    return table


def check_images_exist(table: AttributeTable) -> None:
    """A label row whose image file is missing is an error naming the file."""
    try:
        listing = set(os.listdir(table.image_dir))
    except OSError:
        raise AttrnetError(f"image folder not found: {table.image_dir}") from None
    for f in table.files:
        if f in listing:
            continue
        if "/" in f and (table.image_dir / f).is_file():
            continue
        raise AttrnetError(f"{table.source}: labelled image {f} is missing from {table.image_dir}")


def assign_partition(table: AttributeTable, val_fraction: float, test_fraction: float,
                     seed: int) -> np.ndarray:
    """The table's official partition, or a seeded random train/val/test split when it has none."""
    if table.partition is not None:
        return table.partition
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise AttrnetError("data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1")
    n = len(table)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    part = np.zeros(n, dtype=np.int8)
    part[order[:n_test]] = SPLIT_IDS["test"]
    part[order[n_test:n_test + n_val]] = SPLIT_IDS["val"]
    log.info("%s has no official partition: made a seeded split (seed %d): %d train, %d val, %d test",
             table.source, seed, n - n_val - n_test, n_val, n_test)
    return part


def split_indices(partition: np.ndarray, split: str) -> np.ndarray:
    """Row indices of one split: train, val, test or all."""
    if split == "all":
        return np.arange(len(partition))
    if split not in SPLIT_IDS:
        raise AttrnetError(f"unknown split {split!r}; valid: train, val, test, all")
    return np.flatnonzero(partition == SPLIT_IDS[split])
