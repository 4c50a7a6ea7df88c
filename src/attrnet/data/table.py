"""AttributeTable: the one in-memory form every on-disk format is read into."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from attrnet.errors import AttrnetError

# Values of AttributeTable.partition.
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_IDS = {"train": TRAIN, "val": VAL, "test": TEST}


@dataclass
class AttributeTable:
    """Images and their binary attribute labels.

    labels: float32 [N, M], 1.0 = has the attribute, 0.0 = has not, NaN = unknown.
    partition: int8 [N] with TRAIN/VAL/TEST when the format defines an official split, else None.
    groups: optional attribute grouping {group: [attribute, ...]} shipped with the format.
    """

    image_dir: Path
    files: list[str]
    names: list[str]
    labels: np.ndarray
    partition: np.ndarray | None = None
    groups: dict[str, list[str]] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if self.labels.shape != (len(self.files), len(self.names)):
            raise ValueError(f"labels shape {self.labels.shape} does not match "
                             f"{len(self.files)} files x {len(self.names)} attributes")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[Path]:
        return [self.image_dir / f for f in self.files]

    def select(self, names: Sequence[str] | None) -> "AttributeTable":
        """Keep only the named attributes, in the given order (None keeps all)."""
        if names is None:
            return self
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise AttrnetError(f"unknown attribute(s) {', '.join(unknown)} in {self.source or self.image_dir}; "
                               f"valid names: {', '.join(self.names)}")
        if len(set(names)) != len(names):
            raise AttrnetError(f"attribute list repeats a name: {list(names)}")
        cols = [self.names.index(n) for n in names]
        groups = None
        if self.groups is not None:
            groups = {g: [a for a in attrs if a in names] for g, attrs in self.groups.items()}
            groups = {g: a for g, a in groups.items() if a}
        return replace(self, names=list(names), labels=self.labels[:, cols], groups=groups)

    def subset(self, index: np.ndarray) -> "AttributeTable":
        """Keep only the rows in index (an integer array or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        part = None if self.partition is None else self.partition[index]
        return replace(self, files=[self.files[i] for i in index], labels=self.labels[index], partition=part)

    def positive_rate(self) -> np.ndarray:
        """Fraction of known labels that are positive, per attribute (NaN where none is known)."""
        known = ~np.isnan(self.labels)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nansum(self.labels, axis=0) / known.sum(axis=0)

    def unknown_rate(self) -> np.ndarray:
        return np.isnan(self.labels).mean(axis=0) if len(self) else np.zeros(len(self.names))
