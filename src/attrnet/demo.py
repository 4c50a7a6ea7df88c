"""`attrnet demo`: synthetic faces, a small model, a full train/evaluate cycle in a few CPU minutes."""

from __future__ import annotations

from pathlib import Path

from attrnet.config import config_from_dict
from attrnet.data.synthetic import write_synthetic_celeba
from attrnet.engine.train import fit

# The same recipe as configs/synthetic.yaml (a test keeps the two equal), with a smaller data set.
DEMO_IMAGES = 3000
DEMO_CONFIG = {
    "data": {"format": "celeba", "image_size": 64},
    "model": {"backbone": "resnet18", "pretrained": False},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.002, "weight_decay": 0.05, "warmup_epochs": 0.5},
}


def run_demo(out: Path, device: str = "auto", n_images: int = DEMO_IMAGES, progress: bool = True) -> tuple[dict, Path]:
    """Synthesise out/synthetic-data if absent, train into out/demo (replacing an earlier demo run), return
    (test metrics, run folder)."""
    data_dir = out / "synthetic-data"
    if not (data_dir / "list_attr_celeba.txt").is_file():
        write_synthetic_celeba(data_dir, n_images, seed=0, size=(64, 64))
    raw = {k: dict(v) for k, v in DEMO_CONFIG.items()}
    raw["data"]["root"] = str(data_dir)
    raw["data"]["cache_dir"] = str(out / "cache")
    raw["train"]["device"] = device
    cfg = config_from_dict(raw, "demo")
    run_dir = out / "demo"
    return fit(cfg, run_dir, progress=progress, overwrite=True), run_dir  # the demo replaces its own run
