"""The deep variant of the paper's model: the L S layer trained end to end with proximal steps."""

import torch

from attrnet.config import config_from_dict
from attrnet.data.synthetic import write_synthetic_celeba
from attrnet.engine.train import fit
from attrnet.inference.checkpoint import load_checkpoint

GROUPS = {"accessories": ["Eyeglasses", "Wearing_Hat", "Wearing_Necklace", "Wearing_Necktie", "Wearing_Earrings"],
          "face": ["Male", "Smiling", "Wearing_Lipstick"]}


def _run(tmp_path, mu: float, name: str):
    data = tmp_path / "data"
    if not data.exists():
        write_synthetic_celeba(data, 40, seed=0, size=(32, 32))
    cfg = config_from_dict({
        "data": {"root": str(data), "image_size": 32, "cache_dir": str(tmp_path / "cache"), "groups": GROUPS},
        "model": {"head": "latent", "latent_tasks": 4},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "lr": 0.01, "warmup_epochs": 0},
        "mtl": {"mu": mu, "gamma": 0.0},
    })
    result = fit(cfg, tmp_path / name, progress=False)
    return result, load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]


def test_group_penalty_zeroes_latent_task_blocks(tmp_path):
    # mtl.mu is in the solver's units (a sum over the training labels): the step's threshold is lr mu / n_known,
    # here 0.01 x 1e6 / ~250 = ~40 per step, far above any block's norm
    result, state = _run(tmp_path, mu=1e6, name="strong")
    assert torch.count_nonzero(state["heads.S"]) == 0  # every (task, group) block shrunk to zero
    assert set(result["groups"]) == set(GROUPS)
    _, free = _run(tmp_path, mu=0.0, name="free")
    assert torch.count_nonzero(free["heads.S"]) == free["heads.S"].numel()
