"""Unknown labels (NaN) are left out of the loss, its gradients and every metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attrnet import metrics
from attrnet.losses import masked_bce

NAN = float("nan")


def _manual_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight=None) -> float:
    """Mean over known entries of -(w y log s + (1 - y) log(1 - s)), in float64."""
    total, count = 0.0, 0
    for (i, j), y in np.ndenumerate(targets.numpy()):
        if math.isnan(y):
            continue
        s = 1 / (1 + math.exp(-float(logits[i, j])))
        w = 1.0 if pos_weight is None else float(pos_weight[j])
        total += -(w * y * math.log(s) + (1 - y) * math.log(1 - s))
        count += 1
    return total / max(count, 1)


def test_masked_bce_value_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g) * 2
    targets = torch.tensor([[1, 0, NAN], [0, NAN, 1], [1, 1, 0], [NAN, NAN, NAN], [0, 1, 1]], dtype=torch.float32)
    assert masked_bce(logits, targets).item() == pytest.approx(_manual_bce(logits, targets), rel=1e-5)
    pw = torch.tensor([2.0, 0.5, 3.0])
    assert masked_bce(logits, targets, pw).item() == pytest.approx(_manual_bce(logits, targets, pw), rel=1e-5)
    # all unknown: 0, not NaN
    assert masked_bce(logits, torch.full_like(targets, NAN)).item() == 0.0


def _loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, pos_weight=None):
    x = logits.clone().requires_grad_(True)
    loss = masked_bce(x, targets, pos_weight)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("unknown_logit", [0.0, 3.7, -25.0, 1e4, -1e4, 1e30, float("inf"), float("-inf")])
@pytest.mark.parametrize("use_pos_weight", [False, True])
def test_unknown_label_changes_neither_loss_nor_gradients(unknown_logit, use_pos_weight):
    g = torch.Generator().manual_seed(1)
    base_logits = torch.randn(4, 3, generator=g)
    base_targets = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    pw = torch.tensor([2.0, 0.5, 3.0]) if use_pos_weight else None
    ref_loss, ref_grad = _loss_and_grad(base_logits, base_targets, pw)

    # the same known labels, plus a fourth column whose labels are all unknown
    logits = torch.cat([base_logits, torch.full((4, 1), unknown_logit)], dim=1)
    targets = torch.cat([base_targets, torch.full((4, 1), NAN)], dim=1)
    pw4 = None if pw is None else torch.cat([pw, torch.tensor([7.0])])
    loss, grad = _loss_and_grad(logits, targets, pw4)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad[:, :3], ref_grad, rtol=1e-6, atol=1e-8)
    assert torch.equal(grad[:, 3], torch.zeros(4))

    # and an extra row with one known label: only that label joins the mean
    logits = torch.cat([base_logits, torch.tensor([[unknown_logit, 0.3, unknown_logit]])])
    targets = torch.cat([base_targets, torch.tensor([[NAN, 1.0, NAN]])])
    loss, grad = _loss_and_grad(logits, targets, pw)
    assert loss.item() == pytest.approx(_manual_bce(logits, targets, pw), rel=1e-5)  # skips unknown entries
    # gradient of the known entries: the reference gradient rescaled from 12 to 13 known labels
    torch.testing.assert_close(grad[:4] * 13 / 12, ref_grad, rtol=1e-5, atol=1e-7)
    assert grad[4, 0].item() == 0.0 and grad[4, 2].item() == 0.0 and grad[4, 1].item() != 0.0


# --- metrics -------------------------------------------------------------------------------------------------

def _assert_metrics_equal(a: dict, b: dict, skip=("n_images",)) -> None:
    assert set(a) == set(b)
    for key in a:
        if key in skip:
            continue
        if key == "attributes":
            assert list(a[key]) == list(b[key])
            for name in a[key]:
                _assert_metrics_equal(a[key][name], b[key][name], skip=())
            continue
        va, vb = a[key], b[key]
        if isinstance(va, float) and math.isnan(va):
            assert isinstance(vb, float) and math.isnan(vb), key
        else:
            assert va == pytest.approx(vb, rel=1e-12, abs=1e-12), key


def _sample(n: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, m)) < 0.4).astype(float)
    labels[0], labels[1] = 0.0, 1.0  # both classes in every column
    probs = np.clip(0.35 * labels + 0.65 * rng.random((n, m)), 0, 1)
    return probs, labels


def test_metrics_unchanged_by_rows_with_unknown_labels():
    names = ["A", "B", "C"]
    probs, labels = _sample(30, 3, seed=2)
    thresholds = [0.4, 0.5, 0.62]
    ref = metrics.attribute_metrics(probs, labels, names, thresholds)
    assert 0.5 < ref["mean_accuracy"] < 1.0  # a non-trivial case

    rng = np.random.default_rng(3)
    extra_p = rng.random((7, 3))
    extra_y = np.full((7, 3), np.nan)
    # the unknown rows are interleaved, not just appended
    order = rng.permutation(37)
    all_p = np.concatenate([probs, extra_p])[order]
    all_y = np.concatenate([labels, extra_y])[order]
    out = metrics.attribute_metrics(all_p, all_y, names, thresholds)
    _assert_metrics_equal(out, ref)
    assert out["n_images"] == 37 and ref["n_images"] == 30
    assert out["attributes"]["B"]["n_known"] == 30

    # the same holds for tuned thresholds and the majority baseline
    np.testing.assert_array_equal(metrics.tune_thresholds(all_p, all_y), metrics.tune_thresholds(probs, labels))
    _assert_metrics_equal(metrics.majority_accuracy(all_y, names), metrics.majority_accuracy(labels, names))


def test_metrics_per_column_ignore_scattered_unknowns():
    """With NaNs scattered over the matrix, each column's metrics equal that column's known entries alone."""
    names = ["A", "B", "C", "D"]
    probs, labels = _sample(40, 4, seed=5)
    rng = np.random.default_rng(6)
    holes = rng.random(labels.shape) < 0.3
    holes[:2] = False
    labels = np.where(holes, np.nan, labels)
    probs = np.where(holes, rng.random(labels.shape), probs)  # whatever the model said there
    full = metrics.attribute_metrics(probs, labels, names, 0.45)
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        alone = metrics.attribute_metrics(probs[known, j:j + 1], labels[known, j:j + 1], [name], 0.45)
        _assert_metrics_equal({"x": full["attributes"][name]}, {"x": alone["attributes"][name]})
        assert full["attributes"][name]["n_known"] == known.sum()
        # and accuracy is what it says
        pred = probs[known, j] >= 0.45
        assert full["attributes"][name]["accuracy"] == pytest.approx(np.mean(pred == labels[known, j]))


def test_metrics_column_with_no_known_label_is_nan_and_left_out_of_means():
    probs, labels = _sample(10, 2, seed=7)
    labels = np.concatenate([labels, np.full((10, 1), np.nan)], axis=1)
    probs = np.concatenate([probs, np.full((10, 1), 0.9)], axis=1)
    out = metrics.attribute_metrics(probs, labels, ["A", "B", "C"])
    assert all(math.isnan(v) for k, v in out["attributes"]["C"].items() if k not in ("threshold", "n_known"))
    two = metrics.attribute_metrics(probs[:, :2], labels[:, :2], ["A", "B"])
    assert out["mean_accuracy"] == pytest.approx(two["mean_accuracy"])
    assert out["mean_f1"] == pytest.approx(two["mean_f1"])


def test_mixup_blends_images_and_targets_and_keeps_unknowns_unknown():
    from attrnet.data.augment import mixup
    x = torch.arange(3 * 2 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2, 2)
    y = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, 1.0]])
    perm = torch.tensor([2, 0, 1])
    xm, ym = mixup(x, y, 0.75, perm)
    torch.testing.assert_close(xm, 0.75 * x + 0.25 * x[perm])
    torch.testing.assert_close(ym[0], torch.tensor([1.0, 0.25]))
    assert torch.isnan(ym[1, 1]) and torch.isnan(ym[2, 1])   # unknown on either side of the blend
    assert ym[1, 0].item() == 0.25
    # the masked loss leaves those entries out and takes the blended targets as they are: the float64
    # formula over the 4 known targets, two of them 0.25 (float32 loss of 4 terms: a few ulps, 1e-6 relative)
    from attrnet.losses import masked_bce
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.7], [-0.4, 5.0]])
    assert masked_bce(logits, ym).item() == pytest.approx(_manual_bce(logits, ym), rel=1e-6)
    # and not the value it would have with the unknown targets read as 0
    assert masked_bce(logits, ym).item() != pytest.approx(_manual_bce(logits, torch.nan_to_num(ym)), rel=1e-3)


def test_fit_with_mixup_trains(tmp_path, monkeypatch):
    """fit with train.mixup = a trains on blended batches: every step blends its images and targets with a
    shuffled copy of the batch, weighted by that epoch's seeded Beta(a, a) draws, and the loss it steps on (and
    reports) is the BCE against those blended targets."""
    import csv

    from conftest import random_csv_rows, tiny_config, write_csv_folder

    import attrnet.engine.batch as batch_mod
    import attrnet.engine.train as train_mod
    from attrnet.engine.train import fit

    real_mixup, real_bce = batch_mod.mixup, train_mod.attribute_bce
    mixes, steps = [], []

    def spy_mixup(x, y, lam, perm):
        out = real_mixup(x, y, lam, perm)
        mixes.append({"x": x.clone(), "y": y.clone(), "lam": lam, "perm": perm.clone(), "x_out": out[0].clone()})
        return out

    def spy_bce(logits, targets, *args):  # the training step's per-attribute losses; their mean is the loss
        losses = real_bce(logits, targets, *args)
        loss = losses.mean()
        if logits.requires_grad:  # a training step's loss; validation runs without gradients
            steps.append({"logits": logits.detach().clone(), "targets": targets.clone(), "loss": loss.item()})
        return losses

    monkeypatch.setattr(batch_mod, "mixup", spy_mixup)
    monkeypatch.setattr(train_mod, "attribute_bce", spy_bce)
    data = write_csv_folder(tmp_path / "d", ["image", "A", "B"], random_csv_rows(12, ["A", "B"]))
    cfg = tiny_config(tmp_path / "c", data__root=data, data__format="csv", train__mixup=0.4, train__epochs=2)
    fit(cfg, tmp_path / "run", progress=False)

    # one blend per training step, each right before the step's loss; the same number of steps each epoch
    assert len(mixes) == len(steps) == 4  # 2 epochs x max_steps_per_epoch 2
    per_epoch = len(steps) // cfg.train.epochs
    # the blend weights are the seeded Beta(0.4, 0.4) draws: a fresh generator per epoch, one draw per step
    expected_lams = [np.random.default_rng([cfg.train.seed, e, 7]).beta(0.4, 0.4, per_epoch) for e in range(2)]
    assert [m["lam"] for m in mixes] == np.concatenate(expected_lams).tolist()
    u = 2.0 ** -24  # float32: a blend is 3 roundings (2 products, 1 sum) and 2 of the weights: within 8 u
    for mix, step in zip(mixes, steps):
        x, y, lam, perm = mix["x"].double(), mix["y"].double(), mix["lam"], mix["perm"]
        assert sorted(perm.tolist()) == list(range(len(x)))  # a shuffle of the batch
        torch.testing.assert_close(mix["x_out"].double(), lam * x + (1 - lam) * x[perm],
                                   rtol=0, atol=8 * u * float(x.abs().max()))
        blended = lam * y + (1 - lam) * y[perm]  # what the loss must see (NaN where either side is unknown)
        torch.testing.assert_close(step["targets"].double(), blended, rtol=0, atol=8 * u, equal_nan=True)
        # the loss is the BCE against the blended targets (float64 formula; float32 loss of <= 8 terms: 1e-5)
        assert step["loss"] == pytest.approx(_manual_bce(step["logits"], blended), rel=1e-5)
    # really blended: some images moved and some targets lie strictly between 0 and 1
    assert max(float((m["x_out"] - m["x"]).abs().max()) for m in mixes) > 0.1
    assert any(((s["targets"] > 0) & (s["targets"] < 1)).any() for s in steps)
    # and the training loss fit reports for each epoch is the mean of these losses (written to 6 decimals)
    with open(tmp_path / "run" / "metrics.csv") as f:
        reported = [float(row["train/loss"]) for row in csv.DictReader(f)]
    means = [np.mean([s["loss"] for s in steps[e * per_epoch:(e + 1) * per_epoch]]) for e in range(2)]
    np.testing.assert_allclose(reported, means, rtol=1e-6, atol=5e-7)
