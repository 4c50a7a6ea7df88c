"""Putting data and models together: devices, the decoded data set, loaders and the model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from attrnet.config import Config
from attrnet.data.batches import BatchLoader, epoch_batches
from attrnet.data.cache import CacheBuild, open_or_start
from attrnet.data.cache_files import DecodedImages
from attrnet.data.formats import assign_partition, read_table, split_indices
from attrnet.data.groups import resolve_groups
from attrnet.data.images import RESIZE_METHODS
from attrnet.data.table import AttributeTable
from attrnet.device import same_device
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """decoded is a CacheBuild (or data.device_cache.DeviceCacheBuild) while the cache is still being decoded
    (the first epoch of fit), then the finished DecodedImages (finish_decoding)."""

    table: AttributeTable
    decoded: DecodedImages | CacheBuild
    partition: np.ndarray
    groups: dict[str, list[str]] | None
    bad_images: str = "skip"
    targets: np.ndarray | None = None  # what the training batches learn instead of the labels (distillation's
                                       # soft targets); validation and test always score against the labels

    @property
    def decoding(self) -> bool:
        return not isinstance(self.decoded, DecodedImages)

    def indices(self, split: str) -> np.ndarray:
        """Rows of a split whose image decoded (every row of the split while decoding is under way)."""
        idx = split_indices(self.partition, split)
        return idx if self.decoding else idx[self.decoded.ok[idx]]

    def finish_decoding(self) -> None:
        """Decode what is left, publish the cache and report unreadable images."""
        if self.decoding:
            self.decoded = self.decoded.finish()
            _report_bad(self.decoded, self.table, self.bad_images)


def prepare_data(cfg: Config, progress: bool = True,
                 first_batches: Callable[[np.ndarray], list[np.ndarray]] | None = None,
                 device: torch.device | None = None) -> PreparedData:
    """Read labels, choose attributes, decode (or open the cache of) every image, assign splits.

    first_batches: when the cache has to be built, return at once with decoding under way, in the order of
    first_batches(train rows) (the first epoch's batches), so training starts on the first decoded batch; then
    data.decoding is True until data.finish_decoding(). Not with data.bad_images=error (a bad image must
    stop the run before it starts).
    device: the training device; a GPU that will hold the whole cache decodes it too (data.decode=auto).
    """
    d = cfg.data
    if d.resize not in RESIZE_METHODS:
        raise AttrnetError(f"unknown data.resize {d.resize!r}; valid: {', '.join(RESIZE_METHODS)}")
    if d.bad_images not in ("skip", "error"):
        raise AttrnetError(f"data.bad_images must be skip or error, got {d.bad_images!r}")
    full = read_table(d)
    table = full.select(cfg.attribute_names())
    groups = resolve_config_groups(d.groups, table, full.names)
    partition = assign_partition(table, d.val_fraction, d.test_fraction, d.split_seed)
    data = PreparedData(table, None, partition, groups, d.bad_images)  # type: ignore[arg-type]
    overlap = first_batches is not None and d.bad_images != "error"
    first = (lambda: first_batches(split_indices(partition, "train"))) if overlap else None
    data.decoded = open_or_start(table.paths, cfg.image_hw(), d.grayscale, d.resize, d.cache_dir, d.workers,
                                 progress, first=first, decode_device=_decode_device(cfg, device, len(table)))
    if data.decoding and not overlap:
        data.decoded = data.decoded.finish()
    if not data.decoding:
        _report_bad(data.decoded, table, d.bad_images)
    return data


def _decode_device(cfg: Config, device: torch.device | None, n: int) -> torch.device | None:
    """The GPU that decodes the cache (data.decode=auto): the training GPU when the whole cache will live there
    (RGB: the device decoder gives RGB)."""
    d = cfg.data
    if device is None or device.type != "cuda" or d.decode != "auto" or d.grayscale:
        return None
    h, w = cfg.image_hw()
    return device if fits_on_device(n * 3 * h * w, device, d.cache_on_device) else None


def _report_bad(decoded: DecodedImages, table: AttributeTable, mode: str) -> None:
    if not decoded.n_bad:
        return
    bad = [table.files[i] for i in np.flatnonzero(~decoded.ok)[:3]]
    if mode == "error":
        raise AttrnetError(f"{decoded.n_bad} unreadable image(s) in {table.image_dir}, e.g. {bad[0]} "
                           f"(set data.bad_images=skip to leave them out)")
    log.warning("skipped %d unreadable image(s), e.g. %s", decoded.n_bad, ", ".join(bad))


def resolve_config_groups(spec, table: AttributeTable, known: list[str] | None = None) -> dict[str, list[str]] | None:
    """Attribute groups from the config (a preset name or a mapping), else the format's own, else none.

    known: every attribute of the data set before the selection (a mapping may name left-out ones)."""
    if spec is None:
        return table.groups
    return resolve_groups(spec, table.names, known=known)


def images_for_device(decoded: DecodedImages, device: torch.device, mode) -> torch.Tensor | np.ndarray:
    """The whole decoded set in GPU memory when asked for, or when it takes under a third of what is free
    (already there when it was decoded there)."""
    if device.type != "cuda" or mode is False or mode == "false":
        return decoded.images
    if decoded.device_images is not None and same_device(decoded.device_images.device, device):
        return decoded.device_images
    if not fits_on_device(decoded.images.nbytes, device, mode):
        return decoded.images
    # Copied in chunks: host memory stays a chunk, not a second copy of the whole set.
    images = decoded.images
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), 4096):
        out[start:start + 4096].copy_(torch.from_numpy(np.array(images[start:start + 4096])))
    return out


def fits_on_device(nbytes: int, device: torch.device, mode) -> bool:
    """data.cache_on_device: true, or auto and the set takes under a third of the GPU's free memory."""
    if device.type != "cuda" or mode is False or mode == "false":
        return False
    return mode is True or mode == "true" or nbytes <= torch.cuda.mem_get_info(device)[0] / 3


def make_loader(images, data: PreparedData, idx: np.ndarray, batch_size: int, device: torch.device,
                train: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> BatchLoader:
    """Batches of rows idx; while data is still decoding, each batch waits for its rows first. Training
    batches carry data.targets where there are some, the labels otherwise."""
    labels = data.targets if train and data.targets is not None else data.table.labels
    return BatchLoader(images, labels, idx, batch_size, device, shuffle=train, seed=seed,
                       drop_last=_drops_last(train, idx, batch_size), rank=rank, world_size=world_size,
                       ready=data.decoded.wait if data.decoding else None)


def _drops_last(train: bool, idx: np.ndarray, batch_size: int) -> bool:
    return train and len(idx) >= batch_size


def first_epoch_order(cfg: Config):
    """For prepare_data(first_batches=...): the batches a single process's make_loader(train=True) draws
    in epoch 0, cut to train.max_steps_per_epoch."""
    bs, limit = cfg.train.batch_size, cfg.train.max_steps_per_epoch or None
    return lambda idx: epoch_batches(idx, bs, 0, True, cfg.train.seed, _drops_last(True, idx, bs))[:limit]


def loader_images(data: PreparedData, device: torch.device, mode):
    """What loaders read: the memory-mapped array being filled while decoding, else images_for_device."""
    return data.decoded.images if data.decoding else images_for_device(data.decoded, device, mode)
