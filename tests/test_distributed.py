"""torchrun on CPU: 2 gloo processes train the same weights as 1 process with the same global batch.

Each rank takes half of every global batch; the loss is rescaled so DDP's gradient average is the mean over
the global batch's known labels (some labels here are unknown, so the ranks' shares differ); rank 0 alone
writes the run folder, and each node builds the decoded-image cache once. BatchNorm is frozen
(train.freeze_bn) because CPU has no SyncBatchNorm: per-rank batch statistics would differ from one process.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed

from attrnet.data.synthetic import write_synthetic_celeba

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

# lr is small because Adam turns float-rounding differences of near-zero gradients (two partial sums
# all-reduced vs one sum) into steps of up to lr: 1e-4 keeps them well under atol, while a wrong batch
# split or loss weighting moves weights by about lr per step, far more than atol.
# fp32: bfloat16 results depend on how a batch is split between processes (2e-4 apart after 3 steps).
COMMON = ["train.device=cpu", "train.freeze_bn=true", "train.batch_size=8", "train.max_steps_per_epoch=3",
          "train.shift=0", "train.flip=false", "train.lr=1e-4", "train.log_every=1000", "data.image_size=32",
          "train.precision=fp32"]
ATOL = 1e-5
# Variables of an enclosing torchrun that must not leak into the runs started here.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """64 synthetic faces at 32 px, with about 15% of the labels unknown (0 in CelebA's file)."""
    root = write_synthetic_celeba(tmp_path_factory.mktemp("dist") / "data", 64, seed=0, size=(32, 32))
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    rng = np.random.default_rng(0)
    for i in range(2, len(lines)):
        parts = lines[i].split()
        parts[1:] = ["0" if rng.random() < 0.15 else v for v in parts[1:]]
        lines[i] = " ".join(parts)
    attr.write_text("\n".join(lines) + "\n")
    return root


def _single(args: list[str]) -> None:
    """One process, in this one: `attrnet train ...` through the CLI's main()."""
    from attrnet.cli import main

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []
    saved_env = {k: os.environ.pop(k) for k in DIST_VARS if k in os.environ}
    try:
        assert main(["train", *args]) == 0
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        os.environ.update(saved_env)


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Two CPU processes under torchrun (--standalone picks a free port, so parallel runs do not collide)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "attrnet", "train", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(one: Path, two: Path) -> float:
    """Every float tensor of last.pt within ATOL; returns the largest difference."""
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            diff = (a[k] - b[k]).abs().max().item()
            worst = max(worst, diff)
            assert torch.allclose(a[k], b[k], atol=ATOL), f"{k}: 1 vs 2 processes differ by up to {diff:.2e}"
    return worst


def _history(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def _initial_weights() -> dict[str, torch.Tensor]:
    """The weights fit() starts from (seed 0, 8 attributes)."""
    from attrnet.config import ModelConfig
    from attrnet.models.build import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(), 8, 3).state_dict()


@pytest.mark.slow
def test_two_cpu_ranks_match_one_process_and_resume(data_root: Path, tmp_path: Path) -> None:
    base = COMMON + [f"data.root={data_root}"]
    r1, r2 = tmp_path / "R1", tmp_path / "R2"
    cache1, cache2 = tmp_path / "cache1", tmp_path / "cache2"

    _single(base + ["train.epochs=1", f"data.cache_dir={cache1}", "--out", str(r1)])
    proc = _torchrun(base + ["train.epochs=1", f"data.cache_dir={cache2}", "--out", str(r2)], tmp_path)

    worst = _assert_same_weights(r1, r2)
    init, trained = _initial_weights(), _weights(r1)
    moved = max((trained[k] - init[k]).abs().max().item() for k in init if init[k].is_floating_point())
    assert moved > 10 * ATOL > worst  # the comparison could have failed: training moved the weights
    (h1,), (h2,) = _history(r1), _history(r2)
    assert float(h2["train/loss"]) == pytest.approx(float(h1["train/loss"]), abs=1e-5)
    assert float(h2["val/mean_accuracy"]) == pytest.approx(float(h1["val/mean_accuracy"]), abs=1e-6)

    # Rank 0 alone wrote: the same files as one process, no stray temporary files, one report, quiet rank 1.
    assert _files(r2) == _files(r1)
    assert not [f for f in _files(r2) if Path(f).name.startswith(".")]
    assert proc.stdout.count("run folder:") == 1
    assert proc.stdout.count("MEAN") == 1
    assert (proc.stdout + proc.stderr).count("epoch 1/1") == 1
    # One cache build for the node (rank 1 waited for rank 0's), and nothing half-built left behind.
    entries = [p.name for p in cache2.iterdir()]
    assert len(entries) == 1 and not entries[0].startswith("."), entries

    # --resume under torchrun: the second epoch continues from last.pt on both ranks, same as one process.
    _single(base + ["train.epochs=2", f"data.cache_dir={cache1}", "--out", str(r1), "--resume"])
    proc = _torchrun(base + ["train.epochs=2", f"data.cache_dir={cache2}", "--out", str(r2), "--resume"], tmp_path)
    assert (proc.stdout + proc.stderr).count("resumed from") == 1
    assert [row["epoch"] for row in _history(r2)] == ["1", "2"]
    assert torch.load(r2 / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    _assert_same_weights(r1, r2)


@pytest.mark.slow
def test_two_cpu_ranks_match_one_process_with_a_gradient_weighting(data_root: Path, tmp_path: Path) -> None:
    """MGDA-UB through DDP: known counts, loss sums and the Gram matrix of the per-attribute feature gradients
    are all-reduced, every rank computes the same weights, and the heads' and the backbone's backward passes
    (two, joined by the cut at the features) still all-reduce every gradient once: one process's update."""
    base = COMMON + [f"data.root={data_root}", "train.weighting=mgda", "train.epochs=1"]
    r1, r2 = tmp_path / "R1", tmp_path / "R2"
    _single(base + [f"data.cache_dir={tmp_path / 'cache1'}", "--out", str(r1)])
    _torchrun(base + [f"data.cache_dir={tmp_path / 'cache2'}", "--out", str(r2)], tmp_path)
    worst = _assert_same_weights(r1, r2)
    init, trained = _initial_weights(), _weights(r1)
    moved = max((trained[k] - init[k]).abs().max().item() for k in init if init[k].is_floating_point())
    assert moved > 10 * ATOL > worst
    (h1,), (h2,) = _history(r1), _history(r2)
    assert float(h2["train/loss"]) == pytest.approx(float(h1["train/loss"]), abs=1e-5)
    state = torch.load(r1 / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["train"]["weighting"] == "mgda"
