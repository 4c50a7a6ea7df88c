"""Readers on folders written by the tests: CelebA layout, CSV layout, broken images, bad rows, splits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CELEBA_LABELS, CELEBA_NAMES, NAN, tiny_config, write_celeba, write_csv_folder

from attrnet.config import DataConfig
from attrnet.data.celeba import read_celeba
from attrnet.data.csv_folder import read_csv_folder
from attrnet.data.formats import assign_partition, read_table, split_indices
from attrnet.data.images import load_image, resize_image
from attrnet.data.inspect import format_inspection, inspect_folder
from attrnet.data.table import TEST, TRAIN, VAL, AttributeTable
from attrnet.engine.setup import prepare_data
from attrnet.errors import AttrnetError

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
    assert "the row has 2 values but line 2 names 3 attributes" in str(exc.value)


@pytest.mark.parametrize("row, n_values", [("000003.jpg 1 -1 1 1", 4), ("000003.jpg 1", 1), ("000003.jpg", 0)])
def test_celeba_field_count_message_counts_values_not_fields(tmp_path, row, n_values):
    root = write_celeba(tmp_path / "celeba")
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = row
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    noun = "value" if n_values == 1 else "values"
    assert f"{attr}:5: the row has {n_values} {noun} but line 2 names 3 attributes" in str(exc.value)


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


def _celeba_attr_lines(root: Path) -> tuple[Path, list[str]]:
    attr = root / "list_attr_celeba.txt"
    return attr, attr.read_text().splitlines()


def test_celeba_attribute_named_twice_names_line_2(tmp_path):
    root = write_celeba(tmp_path / "celeba", names=["Smiling", "Male", "Smiling"])
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    attr = root / "list_attr_celeba.txt"
    assert f"{attr}:2: attribute 'Smiling' is named twice (names 1 and 3)" in str(exc.value)


def test_celeba_image_listed_twice_names_both_lines(tmp_path):
    attr, lines = _celeba_attr_lines(write_celeba(tmp_path / "celeba"))
    lines[6] = "000002.jpg  1  1  1"  # line 7 repeats line 4's image with other labels
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttrnetError) as exc:
        read_celeba(tmp_path / "celeba")
    assert f"{attr}:7: image 000002.jpg is listed again (first on line 4)" in str(exc.value)


def test_celeba_partition_listing_an_image_twice_names_the_line(tmp_path):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    part = root / "list_eval_partition.txt"
    part.write_text(part.read_text() + "000003.jpg 0\n")  # line 7; line 3 put it in val
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    assert f"{part}:7: image 000003.jpg is listed again (first on line 3)" in str(exc.value)


@pytest.mark.parametrize("first_line", ["", "Smiling Male Eyeglasses", "6 images", "\u00b2"])
def test_celeba_first_line_must_be_the_image_count(tmp_path, first_line):
    attr, lines = _celeba_attr_lines(write_celeba(tmp_path / "celeba"))
    attr.write_text("\n".join([first_line] + lines[1:]) + "\n")
    with pytest.raises(AttrnetError) as exc:
        read_celeba(tmp_path / "celeba")
    assert f"{attr}:1: expected the number of images" in str(exc.value)


def test_celeba_count_that_disagrees_with_the_rows_is_a_warning(tmp_path, caplog):
    attr, lines = _celeba_attr_lines(write_celeba(tmp_path / "celeba"))
    attr.write_text("\n".join(["9"] + lines[1:]) + "\n")
    table = read_celeba(tmp_path / "celeba")
    assert len(table) == 6
    assert "line 1 says 9 images but the file lists 6" in caplog.text


@pytest.mark.parametrize("name", ["list_attr_celeba.txt", "list_eval_partition.txt"])
def test_celeba_file_that_is_not_utf8_names_the_line(tmp_path, name):
    root = write_celeba(tmp_path / "celeba", partition=[0, 0, 1, 2, 0, 1])
    path = root / name
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"000", b"Caf\xe9", 1)  # Latin-1, line 4
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    assert f"{path}:4: byte 0xe9 is not UTF-8 text; save the file as UTF-8" in str(exc.value)


def test_celeba_binary_or_utf16_file_is_an_error(tmp_path):
    attr, lines = _celeba_attr_lines(write_celeba(tmp_path / "celeba"))
    attr.write_bytes(("\n".join(lines) + "\n").encode("utf-16"))
    with pytest.raises(AttrnetError, match="the file is UTF-16 text; save it as UTF-8"):
        read_celeba(tmp_path / "celeba")
    attr.write_bytes(("\n".join(lines[:5]) + "\n").encode() + b"\x00\x01\x02\n")  # line 6
    with pytest.raises(AttrnetError) as exc:
        read_celeba(tmp_path / "celeba")
    assert f"{attr}:6: a NUL character: this is not a text file" in str(exc.value)


def test_celeba_line_numbers_count_crlf_and_keep_form_feeds_inside_a_line(tmp_path):
    attr, lines = _celeba_attr_lines(write_celeba(tmp_path / "celeba"))
    lines[2] = lines[2].replace(" ", "\x0c", 1)  # whitespace to split(), a line break to splitlines()
    lines[5] = "000004.jpg 1 1 7"  # line 6
    attr.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    with pytest.raises(AttrnetError) as exc:
        read_celeba(tmp_path / "celeba")
    assert f"{attr}:6: value '7' is not 1, -1 or 0" in str(exc.value)


def test_celeba_bom_crlf_and_form_feed_read_the_same_table(tmp_path):
    attr, lines = _celeba_attr_lines(write_celeba(tmp_path / "celeba"))
    lines[2] = lines[2].replace(" ", "\x0c", 1)
    attr.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    table = read_celeba(tmp_path / "celeba")
    assert table.names == CELEBA_NAMES and len(table) == 6
    np.testing.assert_array_equal(table.labels, CELEBA_LABELS)


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
    assert "the row has 2 values but the header names 4 attributes" in str(exc.value)


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


def _write_labels(root: Path, text: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (root / "labels.csv").write_bytes(data)
    return root


def test_csv_attribute_named_twice_names_line_1(tmp_path):
    root = _write_labels(tmp_path / "csv", "image,A,B, A\na.jpg,1,0,0\n")
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    labels = root / "labels.csv"
    assert f"{labels}:1: attribute 'A' is named twice in the header (columns 2 and 4)" in str(exc.value)


def test_csv_header_column_without_a_name_names_line_1(tmp_path):
    root = _write_labels(tmp_path / "csv", "image,A,B,\na.jpg,1,0,\n")  # a trailing comma
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:1: column 4 of the header has no attribute name" in str(exc.value)


def test_csv_image_listed_twice_names_both_lines(tmp_path):
    root = _write_labels(tmp_path / "csv", "image,A,B\na.jpg,1,0\nb.jpg,0,0\n\n a.jpg ,0,1\n")
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:5: image a.jpg is listed again (first on line 2)" in str(exc.value)


def test_csv_row_without_an_image_name_names_the_line(tmp_path):
    root = _write_labels(tmp_path / "csv", "image,A,B\na.jpg,1,0\n ,0,1\n,,\n")
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:3: the row has no image name in its first column" in str(exc.value)


def test_csv_that_is_not_utf8_names_the_line(tmp_path):
    root = _write_labels(tmp_path / "csv", "image,A\na.jpg,1\n".encode() + "caf\xe9.jpg,0\n".encode("latin-1"))
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:3: byte 0xe9 is not UTF-8 text; save the file as UTF-8" in str(exc.value)
    _write_labels(root, "image,A\na.jpg,1\nb.jpg,0\x00\n")
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:3: a NUL character: this is not a text file" in str(exc.value)


def test_csv_line_numbers_count_lines_inside_quoted_fields(tmp_path):
    root = _write_labels(tmp_path / "csv", 'image,A\n"two\nlines.jpg",1\nb.jpg,maybe\n')
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:4: label 'maybe' is not 1, 0, -1 or blank" in str(exc.value)


def test_csv_record_the_csv_module_rejects_names_its_line(tmp_path):
    root = _write_labels(tmp_path / "csv", 'image,A\na.jpg,1\n"' + "x" * 140_000 + "\n")  # an unclosed quote
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    assert f"{root / 'labels.csv'}:3: not a valid CSV record (field larger than field limit" in str(exc.value)


def test_csv_bom_and_crlf_read_the_same_table(tmp_path):
    rows = [",".join(CSV_HEADER)] + [",".join(r) for r in CSV_ROWS]
    root = _write_labels(tmp_path / "csv", "\ufeff" + "\r\n".join(rows) + "\r\n")
    table = read_csv_folder(root)
    assert table.names == ["A", "B", "C", "D"] and table.files[-1] == "sub/e.jpg"
    np.testing.assert_array_equal(table.labels, CSV_LABELS)


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


# --- decoding: what the cache and the predictor rely on ----------------------------------------------------

def _png_with_bad_pixel_data() -> bytes:
    """A PNG whose compressed pixels are damaged but whose chunk checksum matches (torchvision 0.29's PNG
    decoder crashed the process with SIGSEGV on this)."""
    import struct
    import zlib

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (12, 19), (10, 200, 30)).save(buf, "PNG")
    data = buf.getvalue()
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    body = bytearray(data[at + 4:at + 4 + length])
    body[-1] ^= 0xFF  # the zlib checksum
    chunk = b"IDAT" + bytes(body)
    return data[:at] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[at + 8 + length:]


def test_damaged_png_is_an_error_naming_the_file_not_a_crash(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(_png_with_bad_pixel_data())
    with pytest.raises(AttrnetError, match=f"cannot decode image {path}"):
        load_image(path, (16, 16))


def test_16_bit_png_keeps_the_high_byte(tmp_path):
    from PIL import Image
    Image.new("I;16", (5, 7), 0x9A55).save(tmp_path / "deep.png")
    for grayscale, channels in [(False, 3), (True, 1)]:
        img = load_image(tmp_path / "deep.png", (8, 8), grayscale)
        assert img.dtype == torch.uint8 and tuple(img.shape) == (channels, 8, 8)
        assert img.unique().tolist() == [0x9A]


def test_animated_gif_gives_its_first_frame(tmp_path):
    from PIL import Image
    frames = [Image.new("RGB", (12, 10), (c, c, c)) for c in (40, 200, 120)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img = load_image(tmp_path / "anim.gif", (8, 8))
    assert tuple(img.shape) == (3, 8, 8) and img.unique().tolist() == [40]


@pytest.mark.parametrize("name", ["grey.webp", "grey.gif"])
def test_webp_and_gif_in_grayscale_have_one_channel(tmp_path, name):
    from PIL import Image
    Image.new("RGB", (12, 10), (90, 90, 90)).save(tmp_path / name)
    img = load_image(tmp_path / name, (8, 8), grayscale=True)
    assert tuple(img.shape) == (1, 8, 8) and abs(int(img.float().mean()) - 90) <= 3


def test_image_declaring_too_many_pixels_is_refused(tmp_path, monkeypatch):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG")
    data = buf.getvalue()
    sof = data.find(b"\xff\xc0")
    data = data[:sof + 5] + (60000).to_bytes(2, "big") * 2 + data[sof + 9:]  # 60000 x 60000: 10.8 GB as RGB
    (tmp_path / "bomb.jpg").write_bytes(data)
    with pytest.raises(AttrnetError) as exc:
        load_image(tmp_path / "bomb.jpg", (16, 16))
    assert f"image {tmp_path / 'bomb.jpg'} declares more than 178956970 pixels, too many" in str(exc.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # with PIL's own check off, ours still holds
    with pytest.raises(AttrnetError) as exc:
        load_image(tmp_path / "bomb.jpg", (16, 16))
    assert f"image {tmp_path / 'bomb.jpg'} declares 60000 x 60000 pixels; an image must have" in str(exc.value)


def test_unsupported_image_format_is_named(tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.jpg", "PPM")  # a PPM whatever its name
    with pytest.raises(AttrnetError, match=r"PPM images are not supported; convert it to one of JPEG, PNG"):
        load_image(tmp_path / "pic.jpg", (8, 8))


def test_crop_of_a_long_strip_scales_only_its_centre(monkeypatch):
    from attrnet.data import images
    requested: list[int] = []
    real_resize = images.TF.resize

    def spy(img, size, **kw):
        requested.append(size[0] * size[1])
        return real_resize(img, size, **kw)

    monkeypatch.setattr(images.TF, "resize", spy)
    strip = torch.arange(20_000, dtype=torch.uint8).expand(3, 1, 20_000).contiguous()
    out = resize_image(strip, (64, 64), "crop")
    assert tuple(out.shape) == (3, 64, 64)
    assert max(requested) <= 8 * 64 * 64  # scaling the whole strip would ask for 64 x 1,280,000
    # an ordinary photo is cropped exactly as before
    photo = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    expected = images.TF.center_crop(real_resize(photo, [16, 21], antialias=True), [16, 16])
    assert torch.equal(resize_image(photo, (16, 16), "crop"), expected)


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
