"""Shared fixtures for the core tests: tiny image folders written on the fly, tiny configs, one trained run.

Everything here is small on purpose (16 px images, a handful of files, mobilenet_v3_small, 1-2 epochs of 2 steps):
the whole core suite has to run in well under two minutes on a busy 2-core CPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

NAN = float("nan")


def pytest_configure(config):
    # One intra-op thread: on a small, shared CPU, torch's thread pool fighting other processes for the
    # cores made a tiny training run several times slower (46 s against 6 s for the resume test).
    import torch
    torch.set_num_threads(1)

def pytest_collection_modifyitems(config, items):
    """Files holding a test marked slow go first. make test gives whole files to two workers (--dist loadfile) in
    this order, and a long file handed out last keeps one core busy after the other has run out of files."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort: each file keeps its own order


# A CelebA label file with 1 / -1 and some 0 (= unknown) values.
CELEBA_NAMES = ["Smiling", "Male", "Eyeglasses"]
CELEBA_VALUES = [[1, -1, 0],
                 [-1, 1, 1],
                 [0, 0, -1],
                 [1, 1, 1],
                 [-1, -1, -1],
                 [1, 0, -1]]
CELEBA_LABELS = np.array([[1, 0, NAN],
                          [0, 1, 1],
                          [NAN, NAN, 0],
                          [1, 1, 1],
                          [0, 0, 0],
                          [1, NAN, 0]], dtype=np.float32)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (16, 16)) -> Path:
    """A small random-noise JPEG (width, height); different seeds give different pixels."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


def write_celeba(root: Path, names=CELEBA_NAMES, values=CELEBA_VALUES, partition: list[int] | None = None,
                 size: tuple[int, int] = (16, 16)) -> Path:
    """A CelebA-layout folder: img_align_celeba/00000i.jpg, list_attr_celeba.txt, optional partition file."""
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    files = [f"{i + 1:06d}.jpg" for i in range(len(values))]
    for i, f in enumerate(files):
        write_jpeg(img_dir / f, seed=i, size=size)
    lines = [str(len(values)), " ".join(names)]
    lines += [f + " " + " ".join("%2d" % v for v in row) for f, row in zip(files, values)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    if partition is not None:
        (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition)))
    return root


def write_csv_folder(root: Path, header: list[str], rows: list[list[str]], size=(16, 16),
                     labels: str = "labels.csv") -> Path:
    """A CSV-layout folder: images named in the first column (written as JPEGs) and the label CSV."""
    root.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        write_jpeg(root / row[0], seed=100 + i, size=size)
    text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    (root / labels).write_text(text)
    return root


def random_csv_rows(n: int, names: list[str], seed: int = 0, prefix: str = "img") -> list[list[str]]:
    """n rows of random 1/0 labels (each column has both values)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        vals = rng.integers(0, 2, len(names))
        if i < 2:  # make sure every column holds both classes
            vals[:] = i
        rows.append([f"{prefix}{i:03d}.jpg"] + [str(int(v)) for v in vals])
    return rows


def tiny_overrides(cache_dir: Path, **extra) -> list[str]:
    """key=value overrides for a tiny CPU run; extra keys (section__key=value) replace the defaults."""
    base = {
        # the smallest torchvision classifier: a run folder of 25 MB where resnet18's is 180 MB (saving, copying and
        # hashing those files was a large part of the suite's time); tests about resnet18 name it
        "model.backbone": "mobilenet_v3_small",
        "model.pretrained": "false",
        "data.image_size": "16",
        "data.cache_dir": str(cache_dir),
        "train.device": "cpu",
        "train.epochs": "1",
        "train.batch_size": "4",
        "train.max_steps_per_epoch": "2",
        "train.warmup_epochs": "0",
        "train.log_every": "1000",
    }
    for k, v in extra.items():
        base[k.replace("__", ".")] = str(v)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(cache_dir: Path, **extra):
    from attrnet.config import load_config
    return load_config(None, tiny_overrides(cache_dir, **extra))


@pytest.fixture(scope="session")
def csv_run(tmp_path_factory) -> dict:
    """One tiny training run (fit) on attributes [A, B] of a CSV folder with columns A, B, C.

    Returns {"data": folder, "run": run folder, "cache": cache folder, "names": [A, B], "rows": rows}.
    """
    from attrnet.engine.train import fit

    base = tmp_path_factory.mktemp("csv_run")
    rows = random_csv_rows(20, ["A", "B", "C"], seed=1)
    data = write_csv_folder(base / "data", ["image", "A", "B", "C"], rows)
    cache = base / "cache"
    cfg = tiny_config(cache, data__root=data, data__format="csv", data__attributes="[A,B]",
                      data__val_fraction=0.3, data__test_fraction=0.3, train__batch_size=4)
    run = base / "run"
    result = fit(cfg, run, progress=False)
    return {"data": data, "run": run, "cache": cache, "names": ["A", "B"], "rows": rows, "result": result}


@pytest.fixture
def run_cli(capsys):
    """Run attrnet.cli.main(argv) the way a shell would: with main's own logging set-up writing to the
    (captured) stderr. Returns (exit code, stdout, stderr)."""
    from attrnet.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        root, ours = logging.getLogger(), logging.getLogger("attrnet")
        saved_handlers, saved_level, saved_ours = root.handlers[:], root.level, ours.level
        saved_quiet = os.environ.get("ATTRNET_QUIET")
        root.handlers = []  # so main's logging.basicConfig takes effect, as it does in a real shell
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        finally:
            root.handlers = saved_handlers
            root.setLevel(saved_level)
            ours.setLevel(saved_ours)
            if saved_quiet is None:  # --quiet sets it for the process and its workers: not for the next test
                os.environ.pop("ATTRNET_QUIET", None)
            else:
                os.environ["ATTRNET_QUIET"] = saved_quiet
        out, err = capsys.readouterr()
        return code, out, err

    return run
