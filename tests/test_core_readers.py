"""Readers on folders written by the tests: CelebA layout, CSV layout, broken images, bad rows, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attrnet.config import DataConfig
from attrnet.data.celeba import read_celeba
from attrnet.data.csv_folder import read_csv_folder
from attrnet.data.formats import assign_partition, read_table, split_indices
from attrnet.data.inspect import format_inspection, inspect_folder
from attrnet.data.table import TEST, TRAIN, VAL, AttributeTable
from attrnet.engine.setup import prepare_data
from attrnet.errors import AttrnetError
from conftest import CELEBA_LABELS, CELEBA_NAMES, NAN, tiny_config, write_celeba, write_csv_folder


# --- CelebA layout -------------------------------------------------------------------------------------------

def test_celeba_labels_with_unknowns_and_partition(tmp_path):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    table = read_celeba(root)
    assert table.names == CELEBA_NAMES
    assert table.files == [f"{i:06d}.jpg" for i in range(1, 7)]
    assert table.labels.dtype == np.float32 and table.labels.shape == (6, 3)
    np.testing.assert_array_equal(table.labels, CELEBA_LABELS)  # NaN positions must match too
    assert np.isnan(table.labels).sum() == 4  # the four 0 values
    np.testing.assert_array_equal(table.partition, [TRAIN, TRAIN, VAL, TEST, TRAIN, VAL])
    assert table.image_dir == root / "img_align_celeba"
    # positive rate counts known labels only: Smiling 3 of 5 known, Male 2 of 4, Eyeglasses 2 of 5
    np.testing.assert_allclose(table.positive_rate(), [3 / 5, 2 / 4, 2 / 5])
    np.testing.assert_allclose(table.unknown_rate(), [1 / 6, 2 / 6, 1 / 6])


def test_celeba_without_partition_file(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    table = read_celeba(root)
    assert table.partition is None
    np.testing.assert_array_equal(table.labels, CELEBA_LABELS)


def test_celeba_partition_missing_an_image_is_an_error(tmp_path):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    lines = (root / "list_eval_partition.txt").read_text().splitlines()
    (root / "list_eval_partition.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(AttrnetError, match="000006.jpg"):
        read_celeba(root)


def test_celeba_wrong_field_count_names_file_and_line(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = "000003.jpg 1 -1"  # line 5 of the file: one value short
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    assert f"{attr}:5:" in str(exc.value)
    assert "expected a file name and 3 values, got 3 fields" in str(exc.value)


@pytest.mark.parametrize("bad", ["2", "yes", "0.5"])
def test_celeba_bad_value_names_file_and_line(tmp_path, bad):
    root = write_celeba(tmp_path / "celeba")
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[6] = f"000005.jpg -1 {bad} -1"  # line 7
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    assert f"{attr}:7:" in str(exc.value)


def test_celeba_missing_folder_and_label_file(tmp_path):
    with pytest.raises(AttrnetError, match="data folder not found"):
        read_celeba(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttrnetError, match="list_attr_celeba.txt"):
        read_celeba(tmp_path / "empty")


def test_labelled_image_missing_names_the_file(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    (root / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(AttrnetError, match=r"000004\.jpg is missing"):
        read_table(DataConfig(root=str(root), format="celeba"))
    # without the check the labels still read
    assert len(read_table(DataConfig(root=str(root), format="celeba"), check_files=False)) == 6


def test_unknown_attribute_lists_valid_names(tmp_path):
    table = read_celeba(write_celeba(tmp_path / "celeba"))
    with pytest.raises(AttrnetError) as exc:
        table.select(["Smiling", "Bald"])
    msg = str(exc.value)
    assert "Bald" in msg and "valid names: Smiling, Male, Eyeglasses" in msg
    sub = table.select(["Eyeglasses", "Smiling"])
    assert sub.names == ["Eyeglasses", "Smiling"]
    np.testing.assert_array_equal(sub.labels, CELEBA_LABELS[:, [2, 0]])
    # through prepare_data (the path the CLI takes), before any decoding
    cfg = tiny_config(tmp_path / "cache", data__root=tmp_path / "celeba", data__attributes="[Smiling,Bald]")
    with pytest.raises(AttrnetError, match="valid names: Smiling, Male, Eyeglasses"):
        prepare_data(cfg, progress=False)
    assert not (tmp_path / "cache").exists()


# --- CSV layout ----------------------------------------------------------------------------------------------

CSV_HEADER = ["image", "A", "B", "C", "D"]
CSV_ROWS = [
    ["a.jpg", "1", "0", "-1", "true"],
    ["b.jpg", "0", "1", "1", "no"],
    ["c.jpg", "", "NaN", "?", "yes"],
    ["d.jpg", "1.0", "-1", "nan", ""],
    ["sub/e.jpg", "-1", " 1 ", "0", "False"],
]
CSV_LABELS = np.array([[1, 0, 0, 1],
                       [0, 1, 1, 0],
                       [NAN, NAN, NAN, 1],
                       [1, 0, NAN, NAN],
                       [0, 1, 0, 0]], dtype=np.float32)


def test_csv_values_and_unknowns(tmp_path):
    root = write_csv_folder(tmp_path / "csv", CSV_HEADER, CSV_ROWS)
    table = read_csv_folder(root)
    assert table.names == ["A", "B", "C", "D"]
    assert table.files == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "sub/e.jpg"]
    np.testing.assert_array_equal(table.labels, CSV_LABELS)
    assert table.partition is None
    # the sub-folder image passes the existence check
    read_table(DataConfig(root=str(root), format="csv"))


def test_csv_absolute_label_path_and_missing_label_file(tmp_path):
    root = write_csv_folder(tmp_path / "csv", CSV_HEADER, CSV_ROWS, labels="attrs.csv")
    table = read_csv_folder(root, root / "attrs.csv")
    np.testing.assert_array_equal(table.labels, CSV_LABELS)
    with pytest.raises(AttrnetError, match="label file not found"):
        read_csv_folder(root)  # labels.csv does not exist


def test_csv_wrong_field_count_names_file_and_line(tmp_path):
    rows = [r[:] for r in CSV_ROWS]
    rows[2] = ["c.jpg", "1", "0"]  # line 4 of the file
    root = write_csv_folder(tmp_path / "csv", CSV_HEADER, rows)
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:4:" in str(exc.value)
    assert "expected 5 fields, got 3" in str(exc.value)


def test_csv_bad_value_names_file_and_line(tmp_path):
    rows = [r[:] for r in CSV_ROWS]
    rows[3][2] = "maybe"  # line 5
    root = write_csv_folder(tmp_path / "csv", CSV_HEADER, rows)
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:5:" in str(exc.value) and "'maybe'" in str(exc.value)


def test_csv_missing_image_names_the_file(tmp_path):
    root = write_csv_folder(tmp_path / "csv", CSV_HEADER, CSV_ROWS)
    (root / "d.jpg").unlink()
    with pytest.raises(AttrnetError, match=r"d\.jpg is missing"):
        read_table(DataConfig(root=str(root), format="csv"))


# --- broken images -------------------------------------------------------------------------------------------

def _break_images(root: Path) -> None:
    img = root / "img_align_celeba"
    data = (img / "000002.jpg").read_bytes()
    (img / "000002.jpg").write_bytes(data[: len(data) // 2])        # truncated JPEG
    (img / "000005.jpg").write_text("this is not an image\n")        # a text file named .jpg


def test_broken_images_are_skipped_and_counted(tmp_path):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    _break_images(root)
    cfg = tiny_config(tmp_path / "cache", data__root=root, data__bad_images="skip")
    data = prepare_data(cfg, progress=False)
    assert data.decoded.n_bad == 2
    np.testing.assert_array_equal(data.decoded.ok, [True, False, True, True, False, True])
    assert data.decoded.images.shape == (6, 3, 16, 16)
    np.testing.assert_array_equal(data.indices("train"), [0])        # rows 0, 1, 4 are train; 1 and 4 broken
    np.testing.assert_array_equal(data.indices("val"), [2, 5])
    np.testing.assert_array_equal(data.indices("test"), [3])
    np.testing.assert_array_equal(data.indices("all"), [0, 2, 3, 5])
    assert data.decoded.images[[0, 2, 3, 5]].reshape(4, -1).max(axis=1).min() > 0  # good ones hold pixels


def test_broken_images_are_an_error_when_asked(tmp_path):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    _break_images(root)
    cfg = tiny_config(tmp_path / "cache", data__root=root, data__bad_images="error")
    with pytest.raises(AttrnetError) as exc:
        prepare_data(cfg, progress=False)
    assert "2 unreadable image(s)" in str(exc.value) and "000002.jpg" in str(exc.value)


def test_inspect_reports_rates_missing_and_unreadable_files(tmp_path):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    _break_images(root)
    (root / "img_align_celeba" / "000006.jpg").unlink()
    info = inspect_folder(root)
    assert info["format"] == "celeba" and info["images"] == 6 and info["attributes"] == 3
    assert info["partition"] == {"train": 3, "val": 2, "test": 1}
    assert info["per_attribute"]["Male"] == {"positive_rate": 0.5, "unknown_rate": pytest.approx(2 / 6)}
    assert [Path(p).name for p in info["missing"]] == ["000006.jpg"]
    assert sorted(Path(p).name for p in info["unreadable"]) == ["000002.jpg", "000005.jpg"]
    assert info["image_sizes"] == {"16x16": 3}
    text = format_inspection(info)
    assert "6 images, 3 attributes" in text and "missing files: 1" in text and "unreadable files: 2" in text
    assert any(line.split() == ["Male", "0.500", "0.333"] for line in text.splitlines())


# --- the seeded split when a format has no partition ---------------------------------------------------------

def _table(n: int) -> AttributeTable:
    return AttributeTable(image_dir=Path("."), files=[f"{i}.jpg" for i in range(n)], names=["A"],
                          labels=np.zeros((n, 1)))


def test_seeded_split_fractions_and_determinism():
    table = _table(40)
    part = assign_partition(table, val_fraction=0.25, test_fraction=0.2, seed=3)
    assert (part == TEST).sum() == 8 and (part == VAL).sum() == 10 and (part == TRAIN).sum() == 22
    np.testing.assert_array_equal(part, assign_partition(table, 0.25, 0.2, seed=3))
    other = assign_partition(table, 0.25, 0.2, seed=4)
    assert not np.array_equal(part, other)
    assert sorted(np.bincount(other, minlength=3)) == sorted(np.bincount(part, minlength=3))
    # the splits partition the rows
    idx = [split_indices(part, s) for s in ("train", "val", "test")]
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(40))
    np.testing.assert_array_equal(split_indices(part, "all"), np.arange(40))
    np.testing.assert_array_equal(idx[1], np.flatnonzero(part == VAL))
    with pytest.raises(AttrnetError, match="unknown split"):
        split_indices(part, "validation")


def test_seeded_split_rounding_and_zero_fractions():
    part = assign_partition(_table(7), 0.1, 0.1, seed=0)  # round(0.7) = 1 each
    np.testing.assert_array_equal(np.bincount(part, minlength=3), [5, 1, 1])
    part = assign_partition(_table(7), 0.0, 0.0, seed=0)
    np.testing.assert_array_equal(part, np.zeros(7))
    with pytest.raises(AttrnetError, match="sum below 1"):
        assign_partition(_table(7), 0.6, 0.5, seed=0)


def test_official_partition_wins_over_seeded_split(tmp_path):
    table = read_celeba(write_celeba(tmp_path / "celeba", partition=[2, 2, 2, 1, 1, 0]))
    np.testing.assert_array_equal(assign_partition(table, 0.5, 0.1, seed=9), [2, 2, 2, 1, 1, 0])


def test_prepare_data_without_partition_uses_the_seeded_split(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    cfg = tiny_config(tmp_path / "cache", data__root=root, data__val_fraction=0.34, data__test_fraction=0.17,
                      data__split_seed=5)
    data = prepare_data(cfg, progress=False)
    expected = assign_partition(_table(6), 0.34, 0.17, seed=5)
    np.testing.assert_array_equal(data.partition, expected)
    np.testing.assert_array_equal(np.bincount(data.partition, minlength=3), [3, 2, 1])
