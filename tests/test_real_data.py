"""The real CelebA images in ../shared/data (skipped with a reason where the folder is absent)."""

from pathlib import Path

import numpy as np
import pytest

from attrnet.config import DataConfig
from attrnet.config_rules import SEED8
from attrnet.data.cache import decode_all
from attrnet.data.formats import assign_partition, read_table

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-8k"
pytestmark = pytest.mark.skipif(not CELEBA.is_dir(), reason=f"real CelebA copy not at {CELEBA}")


def test_real_celeba_reads_with_official_labels():
    table = read_table(DataConfig(root=str(CELEBA), format="celeba"))
    assert len(table) == 8000 and len(table.names) == 40
    assert table.partition is None  # no list_eval_partition.txt: a seeded split is made
    assert not np.isnan(table.labels).any()
    rates = dict(zip(table.names, table.positive_rate()))
    assert 0.01 < rates["Bald"] < 0.04 and 0.75 < rates["No_Beard"] < 0.86  # as the data's README says
    seed8 = table.select(SEED8)
    assert seed8.names == SEED8 and seed8.labels.shape == (8000, 8)
    part = assign_partition(table, 0.1, 0.2, seed=0)
    assert np.bincount(part).tolist() == [5600, 800, 1600]


def test_real_celeba_images_decode(tmp_path):
    table = read_table(DataConfig(root=str(CELEBA), format="celeba")).subset(np.arange(40))
    decoded = decode_all(table.paths, (128, 128), grayscale=True, cache_root=tmp_path, progress=False)
    assert decoded.images.shape == (40, 1, 128, 128) and decoded.n_bad == 0
    assert 40 < decoded.images.mean() < 220  # real faces, not blank frames
