"""Readers for the paper's datasets (Clothing Attributes, AwA2) and the attribute groupings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attrnet.data.awa2 import read_awa2
from attrnet.data.clothing import BINARY, CLOTHING_NAMES, MULTICLASS, read_clothing
from attrnet.data.groups import (
    AWA2_GROUPS,
    CELEBA_GROUPS,
    CLOTHING_GROUPS,
    PRESET_GROUPS,
    group_index,
    resolve_groups,
    validate_groups,
)
from attrnet.data.table import TEST, TRAIN, VAL
from attrnet.errors import AttrnetError

REAL_CLOTHING = Path(__file__).resolve().parents[2] / "shared/data/clothing-attributes"

CELEBA_NAMES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips "
                "Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
                "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open "
                "Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
                "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
                "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
AWA2_NAMES = ("black white blue brown gray orange red yellow patches spots stripes furry hairless "
              "toughskin big small bulbous lean flippers hands hooves pads paws longleg longneck "
              "tail chewteeth meatteeth buckteeth strainteeth horns claws tusks smelly flys hops "
              "swims tunnels walks fast slow strong weak muscle bipedal quadrapedal active inactive "
              "nocturnal hibernate agility fish meat plankton vegetation insects forager grazer "
              "hunter scavenger skimmer stalker newworld oldworld arctic coastal desert bush plains "
              "forest fields jungle mountains ocean ground water tree cave fierce timid smart group "
              "solitary nestspot domestic").split()

NAN = float("nan")
# Six images: binary files get BIN (gender too), multi-class files their own columns.
BIN = [1, 2, NAN, 2, 1, 1]
SLEEVE = [1, 2, 3, NAN, 3, 2]
NECK = [3, NAN, 1, 2, 1, 3]
CATEGORY = [7, 1, 4, NAN, 6, 3]


def _save_gt(path: Path, values: list[float]) -> None:
    import scipy.io
    scipy.io.savemat(str(path), {"GT": np.asarray(values, dtype=np.float64).reshape(-1, 1)})


@pytest.fixture
def clothing_root(tmp_path: Path) -> Path:
    from PIL import Image
    root = tmp_path / "clothing"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(1, 7):
        Image.new("RGB", (8, 10), (40 * i, 20, 200)).save(root / "images" / f"{i:06d}.jpg")
    for stem, _ in BINARY:
        _save_gt(root / "labels" / f"{stem}_GT.mat", BIN)
    _save_gt(root / "labels" / "sleevelength_GT.mat", SLEEVE)
    _save_gt(root / "labels" / "neckline_GT.mat", NECK)
    _save_gt(root / "labels" / "category_GT.mat", CATEGORY)
    return root


def test_clothing_names_values_and_nan(clothing_root: Path) -> None:
    t = read_clothing(clothing_root)
    assert len(t.names) == 36 == len(set(t.names))
    assert t.names[:6] == ["necktie", "collar", "female", "placket", "high_skin_exposure", "scarf"]
    assert t.names[-13:] == ["sleeve_none", "sleeve_short", "sleeve_long", "neckline_v",
                             "neckline_round", "neckline_other", "category_shirt", "category_sweater",
                             "category_tshirt", "category_outerwear", "category_suit",
                             "category_tank_top", "category_dress"]
    assert t.files == [f"{i:06d}.jpg" for i in range(1, 7)]
    assert all(p.is_file() for p in t.paths)
    assert t.partition is None and t.source == str(clothing_root)
    assert t.labels.dtype == np.float32 and t.labels.shape == (6, 36)
    binary = [0, 1, NAN, 1, 0, 0]                       # 1 = no, 2 = yes
    for name in ("necktie", "female", "high_skin_exposure", "pattern_solid", "many_colors"):
        np.testing.assert_array_equal(t.labels[:, t.names.index(name)], binary)
    col = {n: t.labels[:, t.names.index(n)] for n in t.names}
    np.testing.assert_array_equal(col["sleeve_none"], [1, 0, 0, NAN, 0, 0])
    np.testing.assert_array_equal(col["sleeve_short"], [0, 1, 0, NAN, 0, 1])
    np.testing.assert_array_equal(col["sleeve_long"], [0, 0, 1, NAN, 1, 0])
    np.testing.assert_array_equal(col["neckline_v"], [0, NAN, 1, 0, 1, 0])
    np.testing.assert_array_equal(col["neckline_round"], [0, NAN, 0, 1, 0, 0])
    np.testing.assert_array_equal(col["neckline_other"], [1, NAN, 0, 0, 0, 1])
    np.testing.assert_array_equal(col["category_dress"], [1, 0, 0, NAN, 0, 0])
    np.testing.assert_array_equal(col["category_shirt"], [0, 1, 0, NAN, 0, 0])
    np.testing.assert_array_equal(col["category_outerwear"], [0, 0, 1, NAN, 0, 0])
    np.testing.assert_array_equal(col["category_tank_top"], [0, 0, 0, NAN, 1, 0])
    np.testing.assert_array_equal(col["category_tshirt"], [0, 0, 0, NAN, 0, 1])
    assert np.isnan(col["category_sweater"][3]) and np.nansum(col["category_sweater"]) == 0
    # One-vs-rest columns of a known value sum to exactly one.
    for names in MULTICLASS.values():
        block = t.labels[:, [t.names.index(n) for n in names]]
        known = ~np.isnan(block).any(axis=1)
        assert (block[known].sum(axis=1) == 1).all()
    assert validate_groups(t.groups, t.names) == t.groups


def test_clothing_female_is_gender_two(clothing_root: Path) -> None:
    _save_gt(clothing_root / "labels" / "gender_GT.mat", [1, 1, 2, 2, NAN, 1])
    t = read_clothing(clothing_root)
    np.testing.assert_array_equal(t.labels[:, t.names.index("female")], [0, 0, 1, 1, NAN, 0])


def test_clothing_errors(clothing_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AttrnetError, match="nowhere"):
        read_clothing(tmp_path / "nowhere")
    (clothing_root / "labels" / "scarf_GT.mat").unlink()
    with pytest.raises(AttrnetError, match="scarf_GT.mat"):
        read_clothing(clothing_root)
    _save_gt(clothing_root / "labels" / "scarf_GT.mat", BIN[:5])
    with pytest.raises(AttrnetError, match=r"scarf_GT.mat \(5\)"):
        read_clothing(clothing_root)
    _save_gt(clothing_root / "labels" / "scarf_GT.mat", [1, 2, 3, 1, 1, 1])
    with pytest.raises(AttrnetError, match="scarf_GT.mat: unexpected value"):
        read_clothing(clothing_root)
    import scipy.io
    scipy.io.savemat(str(clothing_root / "labels" / "scarf_GT.mat"), {"GT": np.ones((6, 2))})
    with pytest.raises(AttrnetError, match=r"scarf_GT.mat: GT has shape \(6, 2\)"):
        read_clothing(clothing_root)
    scipy.io.savemat(str(clothing_root / "labels" / "scarf_GT.mat"), {"labels": np.ones((6, 1))})
    with pytest.raises(AttrnetError, match="no variable 'GT'"):
        read_clothing(clothing_root)
    _save_gt(clothing_root / "labels" / "scarf_GT.mat", BIN)
    (clothing_root / "images" / "000004.jpg").unlink()
    with pytest.raises(AttrnetError, match="000004.jpg"):
        read_clothing(clothing_root)


def test_clothing_other_image_names_with_matching_count(clothing_root: Path) -> None:
    images = clothing_root / "images"
    for i in range(1, 7):
        (images / f"{i:06d}.jpg").rename(images / f"img_{i:02d}.jpg")
    t = read_clothing(clothing_root)
    assert t.files == [f"img_{i:02d}.jpg" for i in range(1, 7)]


def test_clothing_missing_folder(clothing_root: Path) -> None:
    import shutil
    shutil.rmtree(clothing_root / "images")
    with pytest.raises(AttrnetError, match="images"):
        read_clothing(clothing_root)


@pytest.mark.skipif(not REAL_CLOTHING.is_dir(), reason=f"real Clothing Attributes copy not at {REAL_CLOTHING}")
def test_clothing_real_copy() -> None:
    t = read_clothing(REAL_CLOTHING)
    assert len(t) == 1485
    assert len(t.names) == 23 + 3 + 3 + 7 == 36
    assert t.names == CLOTHING_NAMES
    assert (t.unknown_rate() > 0).any()
    assert all(p.is_file() for p in t.paths[:5] + t.paths[-5:])
    assert validate_groups(CLOTHING_GROUPS, t.names) == t.groups
    assert resolve_groups("clothing", t.names) == t.groups


# ---------------------------------------------------------------- AwA2

AWA_CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver"]
AWA_PREDICATES = ["black", "white", "stripes", "big", "swims"]
AWA_MATRIX = np.array([[1, 0, 0, 1, 0],
                       [0, 1, 0, 1, 0],
                       [1, 1, 0, 1, 1],
                       [0, 0, 1, 0, 1]])


def _write_awa2(root: Path, matrix: np.ndarray = AWA_MATRIX) -> Path:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(AWA_CLASSES, 1)))
    (root / "predicates.txt").write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(AWA_PREDICATES, 1)))
    (root / "predicate-matrix-binary.txt").write_text(
        "\n".join(" ".join(str(int(v)) for v in row) for row in matrix) + "\n")
    (root / "trainclasses.txt").write_text("antelope\ngrizzly+bear\nbeaver\n")
    (root / "testclasses.txt").write_text("killer+whale\n")
    for c in AWA_CLASSES:
        (root / "JPEGImages" / c).mkdir(parents=True, exist_ok=True)
        for j in range(3):
            Image.new("RGB", (6, 6), (j * 50, 0, 0)).save(root / "JPEGImages" / c / f"{c}_{10001 + j}.jpg")
    return root


@pytest.fixture
def awa2_root(tmp_path: Path) -> Path:
    return _write_awa2(tmp_path / "awa2")


def test_awa2_labels_from_class_rows(awa2_root: Path) -> None:
    t = read_awa2(awa2_root, val_fraction=0.4)
    assert t.names == AWA_PREDICATES and len(t) == 12
    assert t.files[:3] == [f"antelope/antelope_{10001 + j}.jpg" for j in range(3)]
    assert t.files == sorted(t.files) and all(p.is_file() for p in t.paths)
    assert t.extra["classes"] == [f.split("/")[0] for f in t.files]
    for cls, row in zip(t.extra["classes"], t.labels):
        np.testing.assert_array_equal(row, AWA_MATRIX[AWA_CLASSES.index(cls)])
    assert t.labels.dtype == np.float32
    assert validate_groups(t.groups, t.names) == t.groups
    assert t.groups == {"colour": ["black", "white"], "texture": ["stripes"], "shape": ["big"],
                        "behaviour": ["swims"]}


def test_awa2_seen_unseen_partition(awa2_root: Path) -> None:
    t = read_awa2(awa2_root, val_fraction=0.4, seed=3)
    classes = np.array(t.extra["classes"])
    is_test = classes == "killer+whale"
    assert (t.partition[is_test] == TEST).all() and (t.partition[~is_test] != TEST).all()
    val = t.partition == VAL
    assert val.sum() == round(0.4 * 9) and not (val & is_test).any()
    assert ((t.partition == TRAIN) | val | is_test).all()
    again = read_awa2(awa2_root, val_fraction=0.4, seed=3)
    np.testing.assert_array_equal(again.partition, t.partition)
    none_val = read_awa2(awa2_root, val_fraction=0.0)
    assert (none_val.partition != VAL).all()


def test_awa2_random_mode(awa2_root: Path) -> None:
    (awa2_root / "trainclasses.txt").unlink()
    (awa2_root / "testclasses.txt").unlink()
    t = read_awa2(awa2_root, split="random")
    assert t.partition is None and len(t) == 12
    with pytest.raises(AttrnetError, match="trainclasses.txt"):
        read_awa2(awa2_root, split="classes")
    with pytest.raises(AttrnetError, match="'halves'"):
        read_awa2(awa2_root, split="halves")


def test_awa2_errors(awa2_root: Path, tmp_path: Path) -> None:
    import shutil
    shutil.rmtree(awa2_root / "JPEGImages" / "beaver")
    with pytest.raises(AttrnetError, match="beaver"):
        read_awa2(awa2_root)
    (awa2_root / "JPEGImages" / "beaver").mkdir()
    with pytest.raises(AttrnetError, match="beaver holds no images"):
        read_awa2(awa2_root)

    bad = _write_awa2(tmp_path / "bad", AWA_MATRIX[:, :4])
    with pytest.raises(AttrnetError, match=r"4 x 4, expected 4 classes x 5 predicates"):
        read_awa2(bad)
    bad = _write_awa2(tmp_path / "bad3", AWA_MATRIX[:3])
    with pytest.raises(AttrnetError, match=r"3 x 5, expected 4 classes x 5"):
        read_awa2(bad)
    bad = _write_awa2(tmp_path / "bad2", AWA_MATRIX * 2)
    with pytest.raises(AttrnetError, match="other than 0 and 1"):
        read_awa2(bad)

    ok = _write_awa2(tmp_path / "ok")
    (ok / "testclasses.txt").write_text("killer+whale\nzebra\n")
    with pytest.raises(AttrnetError, match="zebra"):
        read_awa2(ok)
    (ok / "testclasses.txt").write_text("killer+whale\nbeaver\n")
    with pytest.raises(AttrnetError, match="beaver"):
        read_awa2(ok)
    (ok / "predicates.txt").unlink()
    with pytest.raises(AttrnetError, match="predicates.txt"):
        read_awa2(ok)
    with pytest.raises(AttrnetError, match="val_fraction"):
        read_awa2(ok, val_fraction=1.5)


def test_awa2_text_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    root = _write_awa2(tmp_path / "awa")
    classes = root / "classes.txt"
    lines = classes.read_bytes().split(b"\n")
    lines[2] = lines[2] + b"\xe9"  # a Latin-1 byte on line 3
    classes.write_bytes(b"\n".join(lines))
    with pytest.raises(AttrnetError) as exc:
        read_awa2(root)
    assert f"{classes}:3: byte 0xe9 is not UTF-8 text" in str(exc.value)
    classes.write_bytes(b"\n".join(lines).replace(b"\xe9", b""))
    (root / "testclasses.txt").write_bytes("killer+whale\r\n\xff\r\n".encode("latin-1"))
    with pytest.raises(AttrnetError, match=r"testclasses.txt:2: byte 0xff is not UTF-8 text"):
        read_awa2(root)


# ---------------------------------------------------------------- groups

def test_validate_groups_exact_membership() -> None:
    names = ["a", "b", "c", "d"]
    groups = validate_groups({"g2": ["d", "b"], "g1": ["c", "a"]}, names)
    assert groups == {"g2": ["b", "d"], "g1": ["a", "c"]}
    assert list(groups) == ["g2", "g1"]
    assert group_index(groups, names) == [[1, 3], [0, 2]]


def test_validate_groups_errors() -> None:
    names = ["a", "b", "c"]
    with pytest.raises(AttrnetError, match=r"unknown attribute\(s\) zz.*valid names: a, b, c"):
        validate_groups({"g": ["a", "zz"], "h": ["b", "c"]}, names)
    with pytest.raises(AttrnetError, match=r"attribute\(s\) c are in no group"):
        validate_groups({"g": ["a", "b"]}, names)
    assert validate_groups({"g": ["a"]}, names, allow_other=True) == {"g": ["a"], "other": ["b", "c"]}
    with pytest.raises(AttrnetError, match=r"b \(in 'g' and 'h'\)"):
        validate_groups({"g": ["a", "b"], "h": ["b", "c"]}, names)
    with pytest.raises(AttrnetError, match=r"a \(twice in 'g'\)"):
        validate_groups({"g": ["a", "a", "b", "c"]}, names)
    with pytest.raises(AttrnetError, match="'h' is empty"):
        validate_groups({"g": ["a", "b", "c"], "h": []}, names)
    with pytest.raises(AttrnetError, match="'g' must be a list"):
        validate_groups({"g": "abc"}, names)
    with pytest.raises(AttrnetError, match="zz"):
        group_index({"g": ["a", "b", "c", "zz"]}, names)


def test_presets_validate_against_full_lists(clothing_root: Path) -> None:
    assert len(CELEBA_NAMES) == 40 and len(AWA2_NAMES) == 85
    assert validate_groups(CELEBA_GROUPS, CELEBA_NAMES) == {
        g: sorted(m, key=CELEBA_NAMES.index) for g, m in CELEBA_GROUPS.items()}
    assert sum(map(len, validate_groups(AWA2_GROUPS, AWA2_NAMES).values())) == 85
    assert [a for m in AWA2_GROUPS.values() for a in m] == AWA2_NAMES  # groups follow predicates.txt
    clothing = read_clothing(clothing_root)
    assert sum(map(len, validate_groups(CLOTHING_GROUPS, clothing.names).values())) == 36
    assert set(PRESET_GROUPS) == {"celeba", "clothing", "awa2"}


def test_resolve_groups() -> None:
    assert resolve_groups(None, CELEBA_NAMES) is None
    assert resolve_groups("CelebA", CELEBA_NAMES) == validate_groups(CELEBA_GROUPS, CELEBA_NAMES)
    subset = ["Smiling", "Male", "Bald"]
    assert resolve_groups("celeba", subset) == {"hair": ["Bald"], "mouth": ["Smiling"], "global": ["Male"]}
    assert resolve_groups({"x": ["Male", "Bald", "Smiling"]}, subset) == {"x": ["Smiling", "Male", "Bald"]}
    with pytest.raises(AttrnetError, match="'faces'.*celeba, clothing, awa2"):
        resolve_groups("faces", subset)
    with pytest.raises(AttrnetError, match="'awa2' names none"):
        resolve_groups("awa2", subset)
    with pytest.raises(AttrnetError, match="Extra"):
        resolve_groups("celeba", subset + ["Extra"])
    assert resolve_groups("celeba", subset + ["Extra"], allow_other=True)["other"] == ["Extra"]
    with pytest.raises(AttrnetError, match="got int"):
        resolve_groups(3, subset)


def test_a_group_mapping_serves_an_attribute_subset() -> None:
    groups = {"face": ["Smiling", "Male"], "hair": ["Bald", "Bangs"], "neck": ["Wearing_Necktie"]}
    known = ["Smiling", "Male", "Bald", "Bangs", "Wearing_Necktie"]
    subset = ["Smiling", "Bald"]
    # names the data set has but the selection left out are dropped, and so are groups left empty
    assert resolve_groups(groups, subset, known=known) == {"face": ["Smiling"], "hair": ["Bald"]}
    with pytest.raises(AttrnetError, match="unknown attribute"):  # without `known`: strict, as before
        resolve_groups(groups, subset)
    with pytest.raises(AttrnetError, match="unknown attribute.*Smilling"):  # a typo is still a typo
        resolve_groups({"face": ["Smilling", "Male"], "hair": ["Bald"]}, subset, known=known)
