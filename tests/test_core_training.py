"""fit() on tiny data: tuned thresholds in the checkpoint and in evaluation, exact resume, atomic checkpoints."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import random_csv_rows, tiny_config, write_csv_folder

import attrnet.engine.averaging as averaging_mod
import attrnet.engine.optim as optim_mod
import attrnet.engine.train as train_mod
from attrnet.engine.checkpoint import save_checkpoint
from attrnet.engine.evaluate import evaluate_checkpoint
from attrnet.engine.train import fit
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import load_checkpoint
from attrnet.precision import Precision

# --- thresholds tuned on val, kept in best.pt, used by evaluation ---------------------------------------------


def test_fit_tunes_thresholds_into_best_checkpoint(csv_run):
    run, names = csv_run["run"], csv_run["names"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["attributes"] == names
    thresholds = best["thresholds"]
    assert len(thresholds) == len(names) == 2
    assert all(0.0 <= t <= 1.0 for t in thresholds)

    saved = json.loads((run / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["epochs"] == 1
    assert isinstance(saved["mean_accuracy"], float) and 0.0 <= saved["mean_accuracy"] <= 1.0
    assert [saved["attributes"][n]["threshold"] for n in names] == pytest.approx(thresholds, abs=0)
    # mean_accuracy is the mean of the attributes' accuracies
    accs = [saved["attributes"][n]["accuracy"] for n in names]
    assert saved["mean_accuracy"] == pytest.approx(sum(accs) / 2)
    # the test split of 20 images at test_fraction 0.3 holds 6 images
    assert saved["n_images"] == 6

    # evaluate_checkpoint on the same split uses the same thresholds and reproduces the numbers
    ev = evaluate_checkpoint(run, split="test", device="cpu", progress=False)
    assert [ev["attributes"][n]["threshold"] for n in names] == pytest.approx(thresholds, abs=0)
    assert ev["mean_accuracy"] == pytest.approx(saved["mean_accuracy"], abs=1e-9)
    for n in names:
        for key in ("accuracy", "balanced_accuracy", "positive_rate", "predicted_positive_rate"):
            assert ev["attributes"][n][key] == pytest.approx(saved["attributes"][n][key], abs=1e-9, nan_ok=True)


def test_evaluate_applies_the_checkpoint_thresholds(csv_run, tmp_path):
    """Thresholds 0 (everything positive) and 2 (everything negative) make accuracy the class rates."""
    run = csv_run["run"]
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    ckpt["thresholds"] = [0.0, 2.0]
    torch.save(ckpt, tmp_path / "edited.pt")
    ev = evaluate_checkpoint(tmp_path / "edited.pt", split="all", device="cpu", progress=False)
    a, b = ev["attributes"]["A"], ev["attributes"]["B"]
    assert (a["threshold"], b["threshold"]) == (0.0, 2.0)
    assert a["predicted_positive_rate"] == 1.0 and b["predicted_positive_rate"] == 0.0
    labels = np.array([[float(v) for v in r[1:3]] for r in csv_run["rows"]])
    assert a["accuracy"] == pytest.approx(labels[:, 0].mean())
    assert b["accuracy"] == pytest.approx(1 - labels[:, 1].mean())
    assert a["positive_rate"] == pytest.approx(labels[:, 0].mean())
    assert ev["n_images"] == 20
    # the figures at 0.5 are reported beside the tuned ones, and differ from the degenerate thresholds here
    assert "accuracy_at_0.5" in a and "mean_accuracy_at_0.5" in ev


# --- resume gives the same model as an uninterrupted run ------------------------------------------------------


def _resume_config(tmp_path, ema=0.0):
    rows = random_csv_rows(16, ["A", "B", "C"], seed=4)
    data = write_csv_folder(tmp_path / "data", ["image", "A", "B", "C"], rows)
    return tiny_config(tmp_path / "cache", data__root=data, data__format="csv", train__epochs=2,
                       train__batch_size=4, train__max_steps_per_epoch=2, train__flip="true",
                       train__shift=0.125, model__trunk="[16]", model__trunk_dropout=0.5,
                       data__val_fraction=0.25, data__test_fraction=0.25, train__ema=ema)


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch, ema):
    cfg = _resume_config(tmp_path, ema)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    fit(cfg, full_dir, progress=False)

    real = train_mod.train_one_epoch
    calls = []

    def interrupt_at_second_epoch(*args, **kwargs):
        epoch = args[6] if len(args) > 6 else kwargs["epoch"]
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupt_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, resumed_dir, progress=False)
    assert calls == [0, 1]
    after_one = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    assert after_one["epoch"] == 0 and len(after_one["history"]) == 1

    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    fit(cfg, resumed_dir, resume=True, progress=False)

    full, resumed = _weights(full_dir / "checkpoints" / "last.pt"), _weights(resumed_dir / "checkpoints" / "last.pt")
    assert list(full) == list(resumed)
    for key in full:
        assert torch.allclose(full[key].float(), resumed[key].float(), atol=1e-6, rtol=0), key
    # training moved the weights in the second epoch, so the comparison above is not vacuous
    moved = [k for k in full if full[k].is_floating_point()
             and not torch.allclose(full[k], after_one["model"][k], atol=1e-6, rtol=0)]
    assert len(moved) > 10
    if ema:  # the weight average continues where it stopped, too
        full_ema = load_checkpoint(full_dir / "checkpoints" / "last.pt")["ema"]
        resumed_ema = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["ema"]
        for key in full_ema:
            assert torch.allclose(full_ema[key].float(), resumed_ema[key].float(), atol=1e-6, rtol=0), key
        assert not torch.allclose(full_ema["heads.linear.weight"], full["heads.linear.weight"])

    last = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and len(last["history"]) == 2
    with open(resumed_dir / "metrics.csv") as fh:
        rows_resumed = list(csv.DictReader(fh))
    with open(full_dir / "metrics.csv") as fh:
        rows_full = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows_resumed] == ["1", "2"]
    for a, b in zip(rows_full, rows_resumed):
        for key in ("train/loss", "lr", "val/loss", "val/mean_accuracy"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), key
    # the final evaluation agrees too
    m_full = json.loads((full_dir / "metrics.json").read_text())
    m_res = json.loads((resumed_dir / "metrics.json").read_text())
    assert m_full["epochs"] == m_res["epochs"] == 2
    assert m_full["mean_accuracy"] == pytest.approx(m_res["mean_accuracy"], abs=1e-9)

    # resuming with another attribute set is refused, naming what changed
    cfg.data.attributes = ["A", "C"]
    cfg.train.epochs = 3
    with pytest.raises(AttrnetError, match=r"--resume: data.attributes was None in this run, now \['A', 'C'\]"):
        fit(cfg, resumed_dir, resume=True, progress=False)


# --- atomic checkpoint writes ---------------------------------------------------------------------------------


def test_failed_checkpoint_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.pt"
    save_checkpoint(path, model={"w": torch.arange(4.0)}, attributes=["A"], epoch=3)
    before = path.read_bytes()

    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model={"w": torch.zeros(4)}, attributes=["A"], epoch=4)
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model"]["w"], torch.arange(4.0))


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "best.pt", model={}, attributes=[])
    assert list(tmp_path.iterdir()) == []


def test_successful_write_replaces_the_file(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, model={"w": torch.ones(2)}, attributes=["A"], epoch=0)
    save_checkpoint(path, model={"w": torch.full((2,), 5.0)}, attributes=["A"], epoch=1)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and ckpt["version"] == 2 and torch.equal(ckpt["model"]["w"], torch.full((2,), 5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert math.isclose(path.stat().st_mode & 0o777, 0o666 & ~_umask())


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- no host sync inside the training loop (GPU only) ---------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_training_steps_do_not_sync_the_host(tmp_path, scale):
    """torch.cuda.set_sync_debug_mode warns on every synchronising call; an epoch may make one (its .item())."""
    import warnings

    from attrnet.data.batches import BatchLoader
    from attrnet.models.build import build_model

    dev = torch.device("cuda")
    cfg = tiny_config(tmp_path, train__device="cuda", train__max_steps_per_epoch=0, train__scale=scale,
                      train__mixup=0.2 if scale else 0.0, train__log_every=10_000)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=dev)
    labels = np.where(np.random.default_rng(0).random((64, 5)) < 0.5, 1.0, 0.0)
    labels[::7, 2] = np.nan
    loader = BatchLoader(images, labels, np.arange(64), 8, dev, shuffle=True, drop_last=True)
    model = build_model(cfg.model, 5, 3).to(dev).to(memory_format=torch.channels_last)
    precision = Precision.from_config(cfg, dev)
    opt = optim_mod.build_optimizer(model, cfg, dev)
    sched = optim_mod.build_scheduler(opt, cfg, len(loader))
    train_mod.train_one_epoch(model, loader, opt, sched, cfg, precision, 0, progress=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_mod.train_one_epoch(model, loader, opt, sched, cfg, precision, 1, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs  # 8 steps, and only the epoch's final loss.item() waits for the GPU


def test_weight_ema_is_the_exponential_average_of_the_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = averaging_mod.make_ema(model, 0.9)
    assert averaging_mod.make_ema(model, 0.0) is None
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        model.train()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        for k, v in model.state_dict().items():
            expected[k] = 0.9 * expected[k] + 0.1 * v if v.is_floating_point() else v.clone()
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 5
    assert not torch.allclose(ema.module[0].weight, model[0].weight)  # it lags behind the trained weights
    assert not any(p.requires_grad for p in ema.module.parameters())


# --- the first epoch overlaps the decoding of a new cache ------------------------------------------------------

def _overlap_config(tmp_path, n=300, broken=()):
    rows = random_csv_rows(n, ["A", "B"], seed=7)
    data = write_csv_folder(tmp_path / "data", ["image", "A", "B"], rows, size=(12, 12))
    for i in broken:
        (data / rows[i][0]).write_bytes(b"\xff\xd8 not really a jpeg")
    return tiny_config(tmp_path / "cache", data__root=data, data__format="csv", data__workers=2,
                       train__epochs=2, train__batch_size=8, train__max_steps_per_epoch=3,
                       data__val_fraction=0.1, data__test_fraction=0.1), rows


def test_first_epoch_during_decoding_equals_training_on_a_built_cache(tmp_path, monkeypatch):
    cfg, _ = _overlap_config(tmp_path)
    from attrnet.data import cache as cache_mod
    waits = []
    real_wait = cache_mod.CacheBuild.wait
    monkeypatch.setattr(cache_mod.CacheBuild, "wait", lambda self, idx: waits.append(len(idx)) or real_wait(self, idx))
    fit(cfg, tmp_path / "overlapped", progress=False)   # fresh cache: decoded while the first epoch trains
    assert waits and waits[:3] == [8, 8, 8]               # the training batches waited for their rows
    built = [p for p in (tmp_path / "cache").iterdir()]
    assert len(built) == 1 and (built[0] / "meta.json").is_file()  # published, no temporary folder left
    waits.clear()
    fit(cfg, tmp_path / "cached", progress=False)       # the cache exists now: read as usual
    assert waits == []
    a = load_checkpoint(tmp_path / "overlapped" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cached" / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma = json.loads((tmp_path / "overlapped" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert ma["mean_accuracy"] == mb["mean_accuracy"] and ma["n_images"] == mb["n_images"] == 30


def test_unreadable_image_met_during_the_first_epoch_counts_as_unknown(tmp_path):
    from attrnet.data.batches import BatchLoader, epoch_batches
    from attrnet.data.formats import assign_partition, read_table, split_indices

    # a batch whose rows are not all readable: their labels become unknown (NaN), the others are kept
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    loader = BatchLoader(np.zeros((3, 3, 4, 4), np.uint8), labels, np.arange(3), 3, torch.device("cpu"),
                         ready=lambda idx: idx != 1)
    (x, y), = list(loader.epoch(0))
    assert torch.isnan(y[1]).all() and torch.equal(y[[0, 2]], torch.from_numpy(labels[[0, 2]]))

    # a broken file in the first training batch: the run goes on, the cache records it as unreadable
    cfg, _ = _overlap_config(tmp_path / "probe")
    table = read_table(cfg.data)
    train = split_indices(assign_partition(table, 0.1, 0.1, 0), "train")
    first_row = int(epoch_batches(train, 8, 0, True, cfg.train.seed, True)[0][0])
    cfg, _ = _overlap_config(tmp_path / "b", broken=[first_row])
    result = fit(cfg, tmp_path / "run", progress=False)
    (cache_dir,) = (tmp_path / "b" / "cache").iterdir()
    assert json.loads((cache_dir / "meta.json").read_text())["bad"] == 1
    assert np.load(cache_dir / "ok.npy").sum() == 299
    assert result["n_images"] == 30


def test_interrupted_first_epoch_leaves_no_half_built_cache(tmp_path, monkeypatch):
    cfg, _ = _overlap_config(tmp_path)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "train_one_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "run", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_checkpoint_writer_saves_a_snapshot_in_order_and_reports_failures(tmp_path, monkeypatch):
    """The training changes its tensors in place right after save(): the file must hold the values at save();
    writes land in order; a failed write is raised, not lost."""
    from attrnet.engine import checkpoint as ckpt_mod

    writer = ckpt_mod.CheckpointWriter()
    w = torch.zeros(1000)
    for step in range(5):
        w.fill_(step)
        writer.save(tmp_path / "last.pt", model={"w": w}, attributes=["A"], epoch=step)
    w.fill_(99)
    writer.close()
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["epoch"] == 4 and torch.equal(saved["model"]["w"], torch.full((1000,), 4.0))

    def broken(path, **state):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", broken)
    writer.save(tmp_path / "last.pt", model={"w": w}, attributes=["A"], epoch=5)
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4  # the previous file is intact


def test_backward_warmup_leaves_the_model_as_it_was(tmp_path, caplog):
    """The warm-up works on a copy: a frozen model's weights, BatchNorm statistics, flags and gradients are
    unchanged afterwards, the copy did run a backward pass through the backbone, and it drew nothing from the
    random generator the training's dropout uses (dropout before the heads is on here)."""
    from attrnet.engine.warmup import start_backward_warmup
    from attrnet.models.build import build_model

    cfg = tiny_config(tmp_path, model__backbone="mobilenet_v2", model__dropout="0.5")
    model = build_model(cfg.model, 3, 3)
    model.freeze_backbone(True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    caplog.set_level("INFO", logger="attrnet.engine.warmup")
    rng = torch.get_rng_state()
    thread = start_backward_warmup(model, (4, 3, 32, 32), Precision.from_config(cfg, torch.device("cpu")),
                                   torch.device("cpu"))
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters()) and model.backbone_frozen
    assert "backward pass of the unfrozen backbone prepared" in caplog.text  # logged only once it ran
