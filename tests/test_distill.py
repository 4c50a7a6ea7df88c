"""Distillation: soft targets from the teachers' mean probability, the loss they give, and `attrnet distill`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from attrnet.engine.distill import soft_targets
from attrnet.losses import attribute_bce

NAN = float("nan")


def test_soft_targets_blend_known_labels_and_fill_unknown_ones():
    labels = np.array([[1.0, 0.0, NAN], [0.0, NAN, 1.0]])
    teacher = np.array([[0.8, 0.3, 0.6], [0.1, NAN, 0.9]], dtype=np.float32)
    out = soft_targets(labels, teacher, 0.25)
    expected = np.array([[0.75 + 0.2, 0.075, 0.6], [0.025, NAN, 0.75 + 0.225]])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(soft_targets(labels, teacher, 0.0)[~np.isnan(labels)], labels[~np.isnan(labels)])


def test_loss_on_soft_targets_is_the_weighted_sum_of_label_and_teacher_losses():
    """BCE is linear in its target: BCE(z, (1 - w) y + w p) = (1 - w) BCE(z, y) + w BCE(z, p), entry by entry,
    and an unknown label (NaN) leaves only the teacher's term."""
    torch.manual_seed(0)
    logits = torch.randn(64, 6) * 3
    y = (torch.rand(64, 6) < 0.4).float()
    y[::5, 2] = NAN
    p = torch.rand(64, 6)
    w = 0.4
    target = torch.from_numpy(soft_targets(y.numpy(), p.numpy(), w))
    got = attribute_bce(logits, target).elementwise.double()
    bce = lambda t: torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), t.double(), reduction="none")
    expected = torch.where(torch.isnan(y), bce(p), (1 - w) * bce(torch.nan_to_num(y)) + w * bce(p))
    # float32 loss of |logit| <= ~12: a few units in the last place of values up to ~13
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_distillation_targets_come_from_the_teachers_and_only_training_batches_use_them(csv_run, tmp_path):
    from attrnet.engine.distill import distillation_targets
    from attrnet.engine.setup import make_loader, prepare_data
    from attrnet.inference import load_model

    cfg = tiny_config(csv_run["cache"], data__root=csv_run["data"], data__format="csv", data__attributes="[A,B]",
                      data__val_fraction=0.3, data__test_fraction=0.3, train__teachers=f"[{csv_run['run']}]",
                      train__distill_weight=0.3)
    data = prepare_data(cfg, progress=False)
    report = distillation_targets(cfg, data, torch.device("cpu"))
    probs = load_model(csv_run["run"], "cpu").predict([str(p) for p in data.table.paths]).probabilities
    np.testing.assert_allclose(data.targets, soft_targets(data.table.labels, probs, 0.3), rtol=1e-6, atol=1e-7)
    train = make_loader(data.decoded.images, data, data.indices("train"), 4, torch.device("cpu"), True)
    val = make_loader(data.decoded.images, data, data.indices("val"), 4, torch.device("cpu"), False)
    assert np.allclose(train.labels.numpy(), data.targets, equal_nan=True)
    assert np.allclose(val.labels.numpy(), data.table.labels, equal_nan=True)
    assert report["teachers"][0]["mean_accuracy"] == report["ensemble"]["mean_accuracy"]  # one teacher
    assert report["images"] == len(data.indices("test"))


def test_attrnet_distill_trains_a_student_and_reports_the_teachers(run_cli, csv_run, tmp_path):
    """Two teachers (the session's run and one more seed): teachers.json's ensemble figures are those of the mean of
    their probabilities on the test split at 0.5."""
    from attrnet.engine.evaluate import evaluation_report
    from attrnet.engine.setup import prepare_data
    from attrnet.engine.train import fit
    from attrnet.inference import load_model

    cfg = tiny_config(csv_run["cache"], data__root=csv_run["data"], data__format="csv", data__attributes="[A,B]",
                      data__val_fraction=0.3, data__test_fraction=0.3, train__seed=1)
    second = tmp_path / "teacher2"
    fit(cfg, second, progress=False)
    out = tmp_path / "student"
    code, stdout, err = run_cli(["distill", csv_run["run"], second, "--out", out, "--weight", "0.6",
                                 "train.epochs=1", "train.device=cpu"])
    assert code == 0, err
    saved = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert saved["train"]["teachers"] == [str(csv_run["run"].resolve()), str(second.resolve())]
    assert saved["train"]["distill_weight"] == 0.6
    report = json.loads((out / "teachers.json").read_text())
    data = prepare_data(cfg, progress=False)
    test = data.indices("test")
    paths = [str(data.table.paths[i]) for i in test]
    mean = np.mean([load_model(t, "cpu").predict(paths).probabilities for t in (csv_run["run"], second)], axis=0)
    expected = evaluation_report(mean, data.table.labels[test], data.table.names, np.full(2, 0.5))
    for key in ("mean_accuracy", "mean_balanced_accuracy", "mean_f1"):
        assert report["ensemble"][key] == pytest.approx(expected[key], abs=1e-12, nan_ok=True)
    assert len(report["teachers"]) == 2 and (out / "metrics.json").is_file()


def test_a_teacher_without_an_attribute_is_one_error(run_cli, csv_run, tmp_path):
    code, _, err = run_cli(["distill", csv_run["run"], "--out", tmp_path / "s", "data.attributes=[A,B,C]",
                            "train.device=cpu"])
    assert code == 2 and err.strip().splitlines()[-1].startswith("attrnet: error: train.teachers:")
    assert "does not predict C" in err and not (tmp_path / "s" / "checkpoints").exists()


@pytest.mark.parametrize("argv, message", [
    (["distill", "--out", "X", "train.epochs=1"], "at least one TEACHER"),
    (["distill", "/no/such/run", "--out", "X"], "checkpoint not found"),
])
def test_distill_bad_arguments(run_cli, tmp_path, argv, message):
    code, _, err = run_cli(argv)
    assert code == 2 and message in err
