"""Reader for the Clothing Attributes Dataset (Chen, Gallagher, Girod, ECCV 2012).

Layout: root/images/000001.jpg ... and root/labels/<name>_GT.mat (MATLAB, key GT, one value per
image in image order; 1 = no, 2 = yes; NaN where the annotators disagreed).

The 23 binary attributes become one column each (1.0 = yes). Gender (1 male, 2 female) becomes
`female` (1.0 = female); skin exposure (1 low, 2 high) becomes `high_skin_exposure`. The three
multi-class attributes become one-vs-rest columns (sleeve_*, neckline_*, category_*); an image
whose multi-class label is NaN is NaN in each of its one-vs-rest columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrnet.data.groups import CLOTHING_GROUPS
from attrnet.data.table import AttributeTable
from attrnet.errors import AttrnetError

# (label file stem, column name), binary attributes in the dataset README's order.
BINARY: list[tuple[str, str]] = [
    ("necktie", "necktie"), ("collar", "collar"), ("gender", "female"), ("placket", "placket"),
    ("skin_exposure", "high_skin_exposure"), ("scarf", "scarf"),
    ("pattern_solid", "pattern_solid"), ("pattern_floral", "pattern_floral"),
    ("pattern_spot", "pattern_spot"), ("pattern_graphics", "pattern_graphics"),
    ("pattern_plaid", "pattern_plaid"), ("pattern_stripe", "pattern_stripe"),
    ("red", "red"), ("yellow", "yellow"), ("green", "green"), ("cyan", "cyan"), ("blue", "blue"),
    ("purple", "purple"), ("brown", "brown"), ("white", "white"), ("gray", "gray"),
    ("black", "black"), ("many_colors", "many_colors"),
]

# label file stem -> one-vs-rest column names for class values 1, 2, ...
MULTICLASS: dict[str, list[str]] = {
    "sleevelength": ["sleeve_none", "sleeve_short", "sleeve_long"],
    "neckline": ["neckline_v", "neckline_round", "neckline_other"],
    "category": ["category_shirt", "category_sweater", "category_tshirt", "category_outerwear",
                 "category_suit", "category_tank_top", "category_dress"],
}

LABEL_STEMS: list[str] = [s for s, _ in BINARY] + list(MULTICLASS)
CLOTHING_NAMES: list[str] = [n for _, n in BINARY] + [n for ns in MULTICLASS.values() for n in ns]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _load_gt(path: Path) -> np.ndarray:
    """The GT vector of one label file as float64 [N]."""
    import scipy.io

    if not path.is_file():
        raise AttrnetError(f"missing Clothing Attributes label file {path}; expected all of "
                           f"{', '.join(s + '_GT.mat' for s in LABEL_STEMS)} in {path.parent}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for bad files
        raise AttrnetError(f"cannot read MATLAB label file {path}: {exc}") from exc
    if "GT" not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise AttrnetError(f"label file {path} has no variable 'GT' (it has: {', '.join(keys) or 'none'})")
    gt = np.asarray(mat["GT"])
    if gt.ndim > 2 or (gt.ndim == 2 and min(gt.shape) != 1) or gt.size == 0:
        raise AttrnetError(f"label file {path}: GT has shape {gt.shape}, expected (N, 1) "
                           f"with one value per image")
    try:
        return gt.astype(np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise AttrnetError(f"label file {path}: GT is not numeric ({gt.dtype})") from exc


def _check_values(path: Path, gt: np.ndarray, n_classes: int) -> None:
    """Every known value must be one of 1..n_classes."""
    known = gt[~np.isnan(gt)]
    bad = np.unique(known[~np.isin(known, np.arange(1, n_classes + 1))])
    if bad.size:
        raise AttrnetError(f"label file {path}: unexpected value(s) {', '.join(f'{v:g}' for v in bad[:10])}; "
                           f"expected 1..{n_classes} or NaN")


def _image_files(image_dir: Path, n: int) -> list[str]:
    """000001.jpg ... for n images, or the folder's sorted images when it holds exactly n."""
    expected = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    missing = [f for f in expected if not (image_dir / f).is_file()]
    if not missing:
        return expected
    present = sorted(p.name for p in image_dir.iterdir()
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(present) == n:
        return present
    raise AttrnetError(f"missing image {image_dir / missing[0]} ({len(missing)} of {n} expected "
                       f"images missing; {image_dir} holds {len(present)} image files)")


def read_clothing(root: Path) -> AttributeTable:
    """Read a Clothing Attributes folder into an AttributeTable (36 binary columns, no partition)."""
    root = Path(root)
    image_dir, label_dir = root / "images", root / "labels"
    if not root.is_dir():
        raise AttrnetError(f"Clothing Attributes folder {root} does not exist")
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise AttrnetError(f"missing folder {folder}: a Clothing Attributes root holds "
                               f"images/ (000001.jpg ...) and labels/ (<name>_GT.mat)")
    gts = {stem: _load_gt(label_dir / f"{stem}_GT.mat") for stem in LABEL_STEMS}
    lengths = {stem: len(gt) for stem, gt in gts.items()}
    n = lengths[LABEL_STEMS[0]]
    differ = [f"{s}_GT.mat ({k})" for s, k in lengths.items() if k != n]
    if differ:
        raise AttrnetError(f"Clothing Attributes label files disagree on the number of images: "
                           f"{LABEL_STEMS[0]}_GT.mat has {n} but {', '.join(differ)}")

    columns: list[np.ndarray] = []
    for stem, _ in BINARY:
        gt = gts[stem]
        _check_values(label_dir / f"{stem}_GT.mat", gt, 2)
        columns.append(np.where(np.isnan(gt), np.nan, (gt == 2).astype(np.float64)))
    for stem, names in MULTICLASS.items():
        gt = gts[stem]
        _check_values(label_dir / f"{stem}_GT.mat", gt, len(names))
        for k in range(1, len(names) + 1):
            columns.append(np.where(np.isnan(gt), np.nan, (gt == k).astype(np.float64)))
    labels = np.stack(columns, axis=1).astype(np.float32)

    files = _image_files(image_dir, n)
    return AttributeTable(image_dir=image_dir, files=files, names=list(CLOTHING_NAMES),
                          labels=labels, partition=None,
                          groups={g: list(m) for g, m in CLOTHING_GROUPS.items()},
                          source=str(root))
