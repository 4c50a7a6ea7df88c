"""Opening a model file never runs code from it: every loader refuses a pickle that carries a payload.

The payload creates a folder when it is unpickled without restriction, so "it did not run" is a checked fact.
An older checkpoint with harmless non-tensor objects (numpy scalars) is refused with the command that
converts it, and `attrnet checkpoint upgrade` then gives a file that loads with the same weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from attrnet import model_file
from attrnet.cli import main
from attrnet.config import config_from_dict
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import load_checkpoint, network_from_checkpoint
from attrnet.models.build import build_model
from attrnet.models.factory import KIND_LATENT_TASK


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _cli(argv, capsys) -> tuple[int, str]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    finally:
        root.handlers, _ = saved[0], root.setLevel(saved[1])
    return code, capsys.readouterr().err


def test_the_payload_runs_when_loaded_unsafely(tmp_path):
    """The control: the same file, loaded the unsafe way, does run the payload (so the other tests mean it)."""
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(tmp_path / "ran")}, path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").is_dir()


def _poisoned_copy(run: Path, dest: Path, marker: Path, which: str) -> Path:
    shutil.copytree(run, dest)
    path = dest / "checkpoints" / which
    ckpt = torch.load(path, weights_only=True)
    ckpt["history"] = [Payload(marker)]
    torch.save(ckpt, path)
    return dest


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
def test_commands_refuse_a_payload_without_running_it(tmp_path, csv_run, capsys, command):
    marker = tmp_path / "PAYLOAD_RAN"
    run = _poisoned_copy(csv_run["run"], tmp_path / "run", marker, "last.pt" if command == "resume" else "best.pt")
    argv = {"evaluate": ["evaluate", run, "--device", "cpu"],
            "predict": ["predict", run, csv_run["data"], "--device", "cpu"],
            "resume": ["train", "--resume", "--config", run / "config.yaml", "--out", run, "train.epochs=2"]}[command]
    code, err = _cli(argv, capsys)
    assert code == 2 and "refused" in err and "attrnet checkpoint upgrade" in err, err
    assert not marker.exists()


def _latent_run(tmp_path: Path, csv_run) -> Path:
    """A hand-made MTL run folder (per-attribute features): mtl_model.pt beside feature_cnns.pt."""
    run = tmp_path / "mtl"
    run.mkdir()
    best = load_checkpoint(csv_run["run"])
    cfg = config_from_dict(best["config"])
    cfg.model.pretrained = False
    cnn = build_model(cfg.model, 1, 3).eval()  # one single-attribute CNN per attribute
    dim = cnn.features(torch.zeros(1, 3, 16, 16)).shape[1]
    m = len(best["attributes"])
    stacked = {k: torch.stack([v] * m) for k, v in cnn.state_dict().items()}
    model_file.save_file(run / "feature_cnns.pt", {"stacked_state": stacked, "attributes": best["attributes"]})
    model_file.save_file(run / "mtl_model.pt", {
        "kind": KIND_LATENT_TASK, "L": torch.randn(dim, 2), "S": torch.randn(2, m), "b": torch.zeros(m),
        "attributes": best["attributes"], "feature_mean": torch.zeros(m, dim), "feature_std": torch.ones(m, dim),
        "features": "per_attribute", "config": best["config"], "thresholds": [0.5] * m, "image_size": [16, 16],
        "grayscale": False, "resize": "squash"})
    return run


def test_the_hand_made_latent_run_loads(tmp_path, csv_run):
    net = network_from_checkpoint(load_checkpoint(_latent_run(tmp_path, csv_run)))
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 2)


@pytest.mark.parametrize("poisoned", ["mtl_model.pt", "feature_cnns.pt"])
def test_mtl_loaders_refuse_a_payload(tmp_path, csv_run, poisoned):
    run = _latent_run(tmp_path, csv_run)
    marker = tmp_path / "PAYLOAD_RAN"
    obj = torch.load(run / poisoned, weights_only=True)
    obj["extra"] = Payload(marker)
    torch.save(obj, run / poisoned)
    with pytest.raises(AttrnetError, match="refused"):
        network_from_checkpoint(load_checkpoint(run))
    assert not marker.exists()


def test_the_feature_cache_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"key": "k", "features": torch.zeros(2), "x": Payload(marker)}, tmp_path / "features.pt")
    with pytest.raises(AttrnetError, match="refused"):
        model_file.load_file(tmp_path / "features.pt", "feature cache")
    assert not marker.exists()


def test_an_older_checkpoint_is_refused_then_upgraded(tmp_path, csv_run, capsys):
    old = tmp_path / "old.pt"
    ckpt = torch.load(csv_run["run"] / "checkpoints" / "best.pt", weights_only=True)
    ckpt["history"] = [{"epoch": np.int64(1), "val/mean_accuracy": np.float64(0.75)}]  # what older runs held
    ckpt["thresholds"] = np.asarray(ckpt["thresholds"])
    torch.save(ckpt, old)
    code, err = _cli(["evaluate", old, "--device", "cpu"], capsys)
    assert code == 2 and f"attrnet checkpoint upgrade {old}" in err

    code, _ = _cli(["checkpoint", "upgrade", old], capsys)
    assert code == 0
    upgraded = load_checkpoint(old)
    assert upgraded["history"] == [{"epoch": 1, "val/mean_accuracy": 0.75}]
    assert torch.equal(upgraded["thresholds"], torch.as_tensor(ckpt["thresholds"]))
    for key, value in ckpt["model"].items():
        assert torch.equal(upgraded["model"][key], value), key


def test_saving_refuses_objects_that_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match=r"value\['x'\]: a Payload cannot go into a model file"):
        model_file.save_file(tmp_path / "m.pt", {"x": Payload(tmp_path / "m")})
    assert not (tmp_path / "m.pt").exists()


def test_a_file_that_is_not_a_model_says_what_attrnet_reads_and_never_suggests_unsafe_loading(tmp_path, capsys):
    """A JSON file (an ONNX sidecar, a config) given as the model: one line naming what attrnet accepts; torch's
    own advice to set weights_only=False must not reach the user."""
    from attrnet.cli import main
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08")
    (tmp_path / "m.json").write_text('{"attributes": ["A"]}')
    (tmp_path / "p.jpg").write_bytes(b"")
    for model in ("m.json", "tiny.txt"):
        (tmp_path / "tiny.txt").write_text("hello")
        code = main(["predict", str(tmp_path / model), str(tmp_path / "p.jpg")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("attrnet: error:"), err
        assert "weights_only" not in err and "attrnet reads a run folder" in err
    code = main(["predict", str(tmp_path / "m.json"), str(tmp_path / "p.jpg")])
    assert f"the description of {tmp_path / 'm.onnx'}" in capsys.readouterr().err


def test_checkpoint_upgrade_of_a_weights_only_file_changes_nothing(tmp_path, capsys, monkeypatch):
    """A file that already opens weights-only is not unpickled without restriction, and not rewritten."""
    from attrnet.cli import main
    path = tmp_path / "ok.pt"
    torch.save({"attributes": ["A"], "model": {"w": torch.zeros(2)}}, path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    real_load = torch.load
    calls = []

    def guarded(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", guarded)
    assert main(["checkpoint", "upgrade", str(path)]) == 0
    assert "already weights-only" in capsys.readouterr().out
    assert calls == [True]  # opened once, safely; never with weights_only=False
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
