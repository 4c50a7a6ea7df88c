"""Tests for the synthetic CelebA-like data generator (CPU, small n)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from attrnet.data.synthetic import (
    SYNTHETIC_ATTRIBUTES,
    draw_attributes,
    draw_face_params,
    expected_rates,
    render_face,
    write_synthetic_celeba,
)

TARGET_RATES = {"Eyeglasses": 0.07, "Male": 0.42, "Smiling": 0.48, "Wearing_Hat": 0.05, "Wearing_Necklace": 0.12,
                "Wearing_Necktie": 0.07, "Wearing_Earrings": 0.19, "Wearing_Lipstick": 0.47}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_synthetic_celeba(tmp_path / "a", 40, seed=3)
    b = write_synthetic_celeba(tmp_path / "b", 40, seed=3)
    assert a == tmp_path / "a"
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) == 43 and ha == hb  # 40 images, labels, partition, attrnet-data.json


def test_different_seed_differs(tmp_path: Path) -> None:
    ha = _hashes(write_synthetic_celeba(tmp_path / "a", 20, seed=0))
    hb = _hashes(write_synthetic_celeba(tmp_path / "b", 20, seed=1))
    images = [k for k in ha if k.endswith(".jpg")]
    assert all(ha[k] != hb[k] for k in images)


def test_prefix_is_shared(tmp_path: Path) -> None:
    small = write_synthetic_celeba(tmp_path / "s", 30, seed=5)
    big = write_synthetic_celeba(tmp_path / "b", 60, seed=5)
    hs, hb = _hashes(small), _hashes(big)
    for i in range(1, 31):
        name = f"img_align_celeba/{i:06d}.jpg"
        assert hs[name] == hb[name]
    for fname in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        skip = 2 if fname == "list_attr_celeba.txt" else 0
        assert ((small / fname).read_text().splitlines()[skip:]
                == (big / fname).read_text().splitlines()[skip:skip + 30])


def test_label_files_official_format(tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / "d", 50, seed=2, size=(48, 56))
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "50"
    assert lines[1] == " ".join(SYNTHETIC_ATTRIBUTES) and len(lines[1].split()) == 8
    assert len(lines) == 52
    row = re.compile(r"^\d{6}\.jpg( (-1| 1)){8}$")
    for i, line in enumerate(lines[2:], start=1):
        assert row.match(line), line
        assert line.startswith(f"{i:06d}.jpg ")
        assert set(line.split()[1:]) <= {"1", "-1"}
    parts = (root / "list_eval_partition.txt").read_text().splitlines()
    assert len(parts) == 50
    assert all(re.match(rf"^{i:06d}\.jpg [012]$", p) for i, p in enumerate(parts, start=1))
    split = np.array([int(p.split()[1]) for p in parts])
    assert abs((split == 1).mean() - 0.1) <= 0.04 and abs((split == 2).mean() - 0.1) <= 0.04
    from PIL import Image
    with Image.open(root / "img_align_celeba" / "000007.jpg") as im:
        assert im.size == (48, 56) and im.mode == "RGB" and im.format == "JPEG"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_project_reader_loads_it(tmp_path: Path) -> None:
    from attrnet.data.celeba import read_celeba

    table = read_celeba(write_synthetic_celeba(tmp_path / "d", 30, seed=4))
    assert table.names == SYNTHETIC_ATTRIBUTES and len(table) == 30
    assert set(np.unique(table.labels)) <= {0.0, 1.0}
    assert table.partition is not None and set(np.unique(table.partition)) == {0, 1, 2}
    assert all(p.is_file() for p in table.paths)


def test_split_fractions(tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / "d", 100, seed=0, size=(16, 16), val_fraction=0.2, test_fraction=0.3)
    split = np.array([int(line.split()[1]) for line in (root / "list_eval_partition.txt").read_text().splitlines()])
    assert [round((split == k).mean(), 2) for k in range(3)] == pytest.approx([0.5, 0.2, 0.3], abs=0.02)


def test_table_matches_targets() -> None:
    rates = expected_rates()
    assert list(rates) == SYNTHETIC_ATTRIBUTES
    for name, target in TARGET_RATES.items():
        assert rates[name] == pytest.approx(target, abs=0.01), name


def _sample_labels(n: int = 2000, seed: int = 0) -> np.ndarray:
    rows = [draw_attributes(np.random.default_rng([seed, i])) for i in range(n)]
    return np.array([[r[a] for a in SYNTHETIC_ATTRIBUTES] for r in rows], dtype=bool)


def test_positive_rates() -> None:
    labels = _sample_labels()
    for j, name in enumerate(SYNTHETIC_ATTRIBUTES):
        assert labels[:, j].mean() == pytest.approx(TARGET_RATES[name], abs=0.03), name


def test_correlations() -> None:
    labels = _sample_labels()
    col = {name: labels[:, j] for j, name in enumerate(SYNTHETIC_ATTRIBUTES)}
    male = col["Male"]
    assert col["Wearing_Lipstick"][male].mean() < 0.1
    assert male[col["Wearing_Necktie"]].mean() > 0.8
    assert col["Eyeglasses"][male].mean() > col["Eyeglasses"][~male].mean()
    assert col["Wearing_Necklace"][~male].mean() > 2 * col["Wearing_Necklace"][male].mean()
    assert col["Wearing_Earrings"][~male].mean() > 2 * col["Wearing_Earrings"][male].mean()


H = W = 64
# Where toggling each attribute should change the pixels: (rows, cols) of the 64x64 image.
REGIONS = {
    "Eyeglasses": (slice(H // 4, H // 2), slice(None)),
    "Male": (slice(None), slice(None)),
    "Smiling": (slice(H // 2, 3 * H // 4), slice(W // 4, 3 * W // 4)),
    "Wearing_Hat": (slice(0, int(0.4 * H)), slice(None)),
    "Wearing_Necklace": (slice(H // 2, H), slice(None)),
    "Wearing_Necktie": (slice(2 * H // 3, H), slice(None)),
    "Wearing_Earrings": (slice(H // 3, 2 * H // 3), np.r_[0:W // 2 - 4, W // 2 + 4:W]),
    "Wearing_Lipstick": (slice(H // 2, 3 * H // 4), slice(W // 4, 3 * W // 4)),
}
# Least mean absolute difference (0-255 scale) over the whole image, and over the region.
MIN_MAD = {"Eyeglasses": (0.8, 3.0), "Male": (3.0, 3.0), "Smiling": (0.25, 2.0), "Wearing_Hat": (2.0, 5.0),
           "Wearing_Necklace": (0.25, 0.5), "Wearing_Necktie": (1.0, 3.0), "Wearing_Earrings": (0.2, 0.5),
           "Wearing_Lipstick": (0.12, 1.0)}


@pytest.mark.parametrize("name", SYNTHETIC_ATTRIBUTES)
@pytest.mark.parametrize("male", [False, True])
def test_each_attribute_is_visible(name: str, male: bool) -> None:
    if name == "Male" and male:
        pytest.skip("toggling Male from a male base is the same as the other case")
    rows, cols = REGIONS[name]
    for i in range(8):
        params = draw_face_params(np.random.default_rng([11, i]))
        base = {a: False for a in SYNTHETIC_ATTRIBUTES}
        base["Male"] = male
        on = dict(base, **{name: True})
        x = np.asarray(render_face(params, base, (W, H)), dtype=np.float32)
        y = np.asarray(render_face(params, on, (W, H)), dtype=np.float32)
        diff = np.abs(x - y).mean(axis=-1)
        region = diff[rows][:, cols]
        assert diff.mean() > MIN_MAD[name][0], (name, i, diff.mean())
        assert region.mean() > MIN_MAD[name][1], (name, i, region.mean())
        assert region.sum() >= 0.8 * diff.sum(), (name, i, region.sum() / diff.sum())


def test_render_is_pure_and_sized() -> None:
    params = draw_face_params(np.random.default_rng(0))
    attrs = draw_attributes(np.random.default_rng(1))
    a, b = render_face(params, attrs, (40, 52)), render_face(params, attrs, (40, 52))
    assert a.size == (40, 52) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_rewrite_and_bad_arguments(tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / "d", 12, seed=0, size=(16, 16))
    write_synthetic_celeba(root, 5, seed=0, size=(16, 16))
    assert (root / "list_attr_celeba.txt").read_text().splitlines()[0] == "5"
    with pytest.raises(ValueError):
        write_synthetic_celeba(tmp_path / "e", -1)
    with pytest.raises(ValueError):
        write_synthetic_celeba(tmp_path / "e", 5, val_fraction=0.6, test_fraction=0.5)
