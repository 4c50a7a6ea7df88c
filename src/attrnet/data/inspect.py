"""`attrnet data inspect`: what a data folder holds, before anyone trains on it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from attrnet.data.formats import read_table
from attrnet.errors import AttrnetError


def guess_format(root: Path) -> str:
    if (root / "list_attr_celeba.txt").is_file():
        return "celeba"
    if (root / "labels").is_dir() and any((root / "labels").glob("*_GT.mat")):
        return "clothing"
    if (root / "predicate-matrix-binary.txt").is_file():
        return "awa2"
    if any(root.glob("*.csv")):
        return "csv"
    raise AttrnetError(f"{root}: cannot tell the data format; pass --format celeba|csv|clothing|awa2")


def inspect_folder(root: str | Path, fmt: str | None = None, labels: str = "labels.csv") -> dict:
    """Counts, label rates, image sizes and unreadable files (headers only: no full decode)."""
    root = Path(root)
    if not root.is_dir():
        raise AttrnetError(f"data folder not found: {root}")
    fmt = fmt or guess_format(root)
    # read_table's fields of a data config (the split fields matter to awa2's reader only, which inspecting ignores)
    wanted = SimpleNamespace(root=str(root), format=fmt, labels=labels, awa2_split="random", split_seed=0,
                             val_fraction=0.0, test_fraction=0.0)
    table = read_table(wanted, check_files=False)
    sizes: Counter = Counter()
    modes: Counter = Counter()
    missing, unreadable = [], []
    for path in table.paths:
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                sizes[im.size] += 1
                modes[im.mode] += 1
                im.load()  # catches truncated files
        except Exception:
            unreadable.append(str(path))
    pos, unk = table.positive_rate(), table.unknown_rate()
    return {"root": str(root), "format": fmt, "images": len(table), "attributes": len(table.names),
            "partition": None if table.partition is None else
            {s: int((table.partition == i).sum()) for i, s in enumerate(("train", "val", "test"))},
            "per_attribute": {n: {"positive_rate": float(pos[j]), "unknown_rate": float(unk[j])}
                              for j, n in enumerate(table.names)},
            "image_sizes": {f"{w}x{h}": c for (w, h), c in sizes.most_common(5)},
            "distinct_sizes": len(sizes), "modes": dict(modes), "missing": missing, "unreadable": unreadable,
            "groups": table.groups}


def format_inspection(info: dict) -> str:
    lines = [f"{info['root']}  ({info['format']}): {info['images']} images, {info['attributes']} attributes"]
    part = info["partition"]
    lines.append(f"partition: {part}" if part else "partition: none in the folder (training makes a seeded split)")
    width = max(len(n) for n in info["per_attribute"])
    lines.append(f"{'attribute'.ljust(width)}  positive  unknown")
    for name, r in info["per_attribute"].items():
        lines.append(f"{name.ljust(width)}  {r['positive_rate']:8.3f}  {r['unknown_rate']:7.3f}")
    sizes = ", ".join(f"{s} ({c})" for s, c in info["image_sizes"].items())
    lines.append(f"image sizes: {sizes}" + (f" and {info['distinct_sizes'] - 5} more" if info["distinct_sizes"] > 5 else ""))
    lines.append(f"colour modes: {info['modes']}")
    lines.append(f"missing files: {len(info['missing'])}" + (f", e.g. {info['missing'][0]}" if info["missing"] else ""))
    lines.append(f"unreadable files: {len(info['unreadable'])}"
                 + (f", e.g. {info['unreadable'][0]}" if info["unreadable"] else ""))
    if info["groups"]:
        lines.append("groups: " + "; ".join(f"{g} ({len(a)})" for g, a in info["groups"].items()))
    return "\n".join(lines)
