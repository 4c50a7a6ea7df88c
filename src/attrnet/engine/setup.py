"""Putting data and models together: devices, the decoded data set, loaders and the model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from attrnet.config import Config
from attrnet.data.batches import BatchLoader
from attrnet.data.cache import DecodedImages, decode_all
from attrnet.data.formats import assign_partition, read_table, split_indices
from attrnet.data.images import RESIZE_METHODS
from attrnet.data.table import AttributeTable
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AttrnetError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AttrnetError(f"device {name!r} asked for, but no CUDA GPU is available; use train.device=cpu")
    return device


@dataclass
class PreparedData:
    table: AttributeTable
    decoded: DecodedImages
    partition: np.ndarray
    groups: dict[str, list[str]] | None

    def indices(self, split: str) -> np.ndarray:
        """Rows of a split whose image decoded."""
        idx = split_indices(self.partition, split)
        return idx[self.decoded.ok[idx]]


def prepare_data(cfg: Config, progress: bool = True) -> PreparedData:
    """Read labels, choose attributes, decode (or open the cache of) every image, assign splits."""
    d = cfg.data
    if d.resize not in RESIZE_METHODS:
        raise AttrnetError(f"unknown data.resize {d.resize!r}; valid: {', '.join(RESIZE_METHODS)}")
    if d.bad_images not in ("skip", "error"):
        raise AttrnetError(f"data.bad_images must be skip or error, got {d.bad_images!r}")
    full = read_table(d)
    table = full.select(cfg.attribute_names())
    groups = resolve_config_groups(d.groups, table, full.names)
    decoded = decode_all(table.paths, cfg.image_hw(), d.grayscale, d.resize, d.cache_dir, d.workers, progress)
    if decoded.n_bad:
        bad = [table.files[i] for i in np.flatnonzero(~decoded.ok)[:3]]
        if d.bad_images == "error":
            raise AttrnetError(f"{decoded.n_bad} unreadable image(s) in {table.image_dir}, e.g. {bad[0]} "
                               f"(set data.bad_images=skip to leave them out)")
        log.warning("skipped %d unreadable image(s), e.g. %s", decoded.n_bad, ", ".join(bad))
    partition = assign_partition(table, d.val_fraction, d.test_fraction, d.split_seed)
    return PreparedData(table, decoded, partition, groups)


def resolve_config_groups(spec, table: AttributeTable, known: list[str] | None = None) -> dict[str, list[str]] | None:
    """Attribute groups from the config (a preset name or a mapping), else the format's own, else none.

    known: every attribute of the data set before the selection (a mapping may name left-out ones)."""
    if spec is None:
        return table.groups
    from attrnet.data.groups import resolve_groups
    return resolve_groups(spec, table.names, known=known)


def images_for_device(decoded: DecodedImages, device: torch.device, mode) -> torch.Tensor | np.ndarray:
    """The whole decoded set in GPU memory when asked for, or when it takes under a third of what is free."""
    if device.type != "cuda" or mode is False or mode == "false":
        return decoded.images
    nbytes = decoded.images.nbytes
    if mode == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes > free / 3:
            return decoded.images
    # Copied in chunks: host memory stays a chunk, not a second copy of the whole set.
    images = decoded.images
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), 4096):
        out[start:start + 4096].copy_(torch.from_numpy(np.array(images[start:start + 4096])))
    return out


def make_loader(images, data: PreparedData, idx: np.ndarray, batch_size: int, device: torch.device,
                train: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> BatchLoader:
    return BatchLoader(images, data.table.labels, idx, batch_size, device, shuffle=train, seed=seed,
                       drop_last=train and len(idx) >= batch_size, rank=rank, world_size=world_size)
