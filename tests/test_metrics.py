"""Tests of attrnet.metrics with hand-computed numbers."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from attrnet.errors import AttrnetError
from attrnet.metrics import attribute_metrics, group_metrics, majority_accuracy, tune_thresholds

NAN = float("nan")

# Column A: y = 1 1 1 0 0 0 0 0; at 0.5 the predictions are 1 1 0 1 0 0 0 0 -> TP 2, FN 1, FP 1, TN 4.
# Column B: two unknown labels; known y = 0 0 1 1 1 1, predictions 0 1 1 0 1 1 -> TP 3, FN 1, FP 1, TN 1.
# Column C: all unknown.
LABELS = np.array([[1, 0, NAN], [1, 0, NAN], [1, 1, NAN], [0, NAN, NAN],
                   [0, 1, NAN], [0, 1, NAN], [0, 1, NAN], [0, NAN, NAN]])
PROBS = np.array([[0.9, 0.2, 0.5], [0.7, 0.55, 0.5], [0.3, 0.8, 0.5], [0.6, 0.9, 0.5],
                  [0.2, 0.45, 0.5], [0.1, 0.7, 0.5], [0.4, 0.95, 0.5], [0.05, 0.1, 0.5]])
NAMES = ["A", "B", "C"]


def test_hand_computed_example() -> None:
    m = attribute_metrics(PROBS, LABELS, NAMES)
    a, b, c = (m["attributes"][n] for n in NAMES)
    assert a["accuracy"] == pytest.approx(6 / 8)
    assert a["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert a["f1"] == pytest.approx(4 / 6)
    assert a["average_precision"] == pytest.approx((1 + 1 + 3 / 5) / 3)  # positives at ranks 1, 2, 5
    assert a["positive_rate"] == pytest.approx(3 / 8)
    assert a["predicted_positive_rate"] == pytest.approx(3 / 8)
    assert a["majority_accuracy"] == pytest.approx(5 / 8)
    assert a["n_known"] == 8 and a["threshold"] == 0.5
    assert b["accuracy"] == pytest.approx(4 / 6)
    assert b["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert b["f1"] == pytest.approx(6 / 8)
    assert b["average_precision"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)  # positives at ranks 1, 2, 3, 5
    assert b["positive_rate"] == pytest.approx(4 / 6)
    assert b["n_known"] == 6
    # all-unknown column: NaN metrics, left out of the means
    assert c["n_known"] == 0
    for k in ("accuracy", "balanced_accuracy", "f1", "average_precision", "positive_rate"):
        assert math.isnan(c[k])
    assert m["mean_accuracy"] == pytest.approx((6 / 8 + 4 / 6) / 2)
    assert m["mean_balanced_accuracy"] == pytest.approx(((2 / 3 + 4 / 5) / 2 + 5 / 8) / 2)
    assert m["mean_f1"] == pytest.approx((4 / 6 + 6 / 8) / 2)
    assert m["mean_average_precision"] == pytest.approx((2.6 / 3 + 3.8 / 4) / 2)
    assert m["n_images"] == 8
    for v in a.values():
        assert type(v) in (float, int)


def test_per_attribute_thresholds() -> None:
    m = attribute_metrics(PROBS, LABELS, NAMES, thresholds=[0.35, 0.5, 0.5])
    # A at 0.35: predictions 1 1 0 1 0 0 1 0 -> TP 2, FP 2, TN 3, FN 1
    assert m["attributes"]["A"]["accuracy"] == pytest.approx(5 / 8)
    assert m["attributes"]["A"]["threshold"] == 0.35
    assert m["attributes"]["B"]["accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        attribute_metrics(PROBS, LABELS, NAMES, thresholds=[0.5, 0.5])


def test_unknown_rows_change_nothing() -> None:
    rng = np.random.default_rng(1)
    extra_probs = rng.random((50, 3))
    extra_labels = np.full((50, 3), NAN)
    m1 = attribute_metrics(PROBS, LABELS, NAMES)
    m2 = attribute_metrics(np.vstack([PROBS, extra_probs]), np.vstack([LABELS, extra_labels]), NAMES)
    assert m2["n_images"] == 58
    for n in NAMES:
        for k, v in m1["attributes"][n].items():
            assert v == pytest.approx(m2["attributes"][n][k], nan_ok=True), (n, k)
    for k in ("mean_accuracy", "mean_balanced_accuracy", "mean_f1", "mean_average_precision"):
        assert m1[k] == pytest.approx(m2[k])


def test_single_class_columns_without_warnings() -> None:
    labels = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=float)
    probs = np.array([[0.9, 0.9, 0.1], [0.2, 0.2, 0.2], [0.7, 0.1, 0.3], [0.6, 0.3, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = attribute_metrics(probs, labels, ["pos", "neg", "neg_none_predicted"])
    pos, neg, none = (m["attributes"][n] for n in ("pos", "neg", "neg_none_predicted"))
    assert pos["accuracy"] == pytest.approx(0.75)
    assert pos["balanced_accuracy"] == pytest.approx(0.75)  # recall of the present class
    assert pos["f1"] == pytest.approx(6 / 7)
    assert pos["average_precision"] == pytest.approx(1.0)
    assert neg["balanced_accuracy"] == pytest.approx(0.75)
    assert neg["f1"] == 0.0  # one false positive
    assert math.isnan(neg["average_precision"])  # no positive: undefined
    assert math.isnan(none["f1"])  # nothing positive at all: 0/0
    assert none["accuracy"] == 1.0
    assert m["mean_f1"] == pytest.approx((6 / 7 + 0.0) / 2)
    assert m["mean_average_precision"] == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        attribute_metrics(PROBS[:, :2], LABELS, NAMES)
    with pytest.raises(ValueError):
        attribute_metrics(PROBS, LABELS * 2, NAMES)
    with pytest.raises(ValueError):
        attribute_metrics(PROBS, LABELS, ["A", "B"])


def test_majority_baseline() -> None:
    labels = np.array([[1, 0, NAN, 1], [1, 0, NAN, 0], [0, 1, NAN, NAN], [1, NAN, NAN, NAN]])
    b = majority_accuracy(labels, ["a", "b", "c", "d"])
    assert b["attributes"]["a"] == {"accuracy": 0.75, "majority_value": 1, "n_known": 4}
    assert b["attributes"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert b["attributes"]["b"]["majority_value"] == 0
    assert math.isnan(b["attributes"]["c"]["accuracy"]) and b["attributes"]["c"]["majority_value"] is None
    assert b["attributes"]["d"]["accuracy"] == 0.5  # tie
    assert b["mean_accuracy"] == pytest.approx((0.75 + 2 / 3 + 0.5) / 3)
    assert list(majority_accuracy(labels)["attributes"]) == ["0", "1", "2", "3"]


def test_tune_finds_shifted_threshold() -> None:
    # every score is above 0.5: at 0.5 everything is positive; the right cut is between 0.65 and 0.7
    labels = np.array([[0], [0], [0], [1], [1], [1], [1], [0], [NAN]], dtype=float)
    probs = np.array([[0.55], [0.6], [0.65], [0.7], [0.75], [0.8], [0.72], [0.58], [0.1]])
    t = tune_thresholds(probs, labels)
    assert t[0] == pytest.approx(0.675)
    assert attribute_metrics(probs, labels, ["x"], t)["attributes"]["x"]["accuracy"] == 1.0
    assert attribute_metrics(probs, labels, ["x"], 0.5)["attributes"]["x"]["accuracy"] == pytest.approx(4 / 8)
    assert tune_thresholds(probs, labels, grid=True)[0] == pytest.approx(0.66)  # ties -> closest to 0.5


def test_tune_ties_and_unknown_columns() -> None:
    labels = np.array([[0, NAN], [0, NAN], [1, NAN], [1, NAN]], dtype=float)
    probs = np.array([[0.1, 0.9], [0.2, 0.9], [0.8, 0.9], [0.9, 0.9]])
    assert tune_thresholds(probs, labels).tolist() == [0.5, 0.5]
    with pytest.raises(AttrnetError):
        tune_thresholds(probs, labels, metric="auc")


def _sklearn_score(p: np.ndarray, y: np.ndarray, metric: str, t: float) -> float:
    fn = {"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score,
          "f1": lambda a, b: f1_score(a, b, zero_division=0.0)}[metric]
    return float(fn(y, (p >= t).astype(int)))


def _brute_force(p: np.ndarray, y: np.ndarray, metric: str, cands: np.ndarray) -> float:
    """Best metric over the candidate thresholds, each evaluated on its own (both classes present)."""
    pred = p[None, :] >= cands[:, None]
    tp = (pred & (y == 1)).sum(1)
    fp = (pred & (y == 0)).sum(1)
    fn = (~pred & (y == 1)).sum(1)
    tn = (~pred & (y == 0)).sum(1)
    if metric == "accuracy":
        s = (tp + tn) / y.size
    elif metric == "balanced_accuracy":
        s = (tp / (tp + fn) + tn / (tn + fp)) / 2
    else:
        s = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(s.max())


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "f1"])
@pytest.mark.parametrize("grid", [None, True])
def test_tune_matches_brute_force(metric: str, grid: bool | None) -> None:
    rng = np.random.default_rng(7)
    n, m = 300, 8
    labels = (rng.random((n, m)) < rng.uniform(0.05, 0.7, m)).astype(float)
    probs = np.clip(0.3 * labels + rng.normal(0.45, 0.2, (n, m)), 0, 1).round(2)  # ties on purpose
    labels[rng.random((n, m)) < 0.2] = NAN
    labels[:, 3] = NAN
    t = tune_thresholds(probs, labels, metric=metric, grid=grid)
    assert t[3] == 0.5
    at_half = attribute_metrics(probs, labels, [str(j) for j in range(m)], 0.5)["attributes"]
    tuned = attribute_metrics(probs, labels, [str(j) for j in range(m)], t)["attributes"]
    for j in range(m):
        if j == 3:
            continue
        known = ~np.isnan(labels[:, j])
        p, y = probs[known, j], labels[known, j].astype(int)
        cands = np.round(np.arange(1, 100) / 100, 2) if grid else np.append(np.unique(p), np.inf)
        assert 0 < y.sum() < y.size
        got = _sklearn_score(p, y, metric, t[j])  # scikit-learn's figure at the chosen threshold
        assert got == pytest.approx(_brute_force(p, y, metric, cands), abs=1e-12)
        if metric == "accuracy":
            assert tuned[str(j)]["accuracy"] >= at_half[str(j)]["accuracy"] - 1e-12


def test_tune_is_fast() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((20000, 40)) < 0.3).astype(float)
    labels[rng.random(labels.shape) < 0.05] = NAN
    probs = rng.random((20000, 40))
    start = time.perf_counter()
    tune_thresholds(probs, labels, metric="balanced_accuracy")
    assert time.perf_counter() - start < 1.0


def test_group_metrics() -> None:
    m = attribute_metrics(PROBS, LABELS, NAMES)
    g = group_metrics(m["attributes"], {"both": ["A", "B"], "unknown": ["C"], "one": ["A"]})
    assert g["both"]["mean_accuracy"] == pytest.approx((6 / 8 + 4 / 6) / 2)
    assert g["both"]["mean_f1"] == pytest.approx((4 / 6 + 6 / 8) / 2)
    assert g["both"]["attributes"] == ["A", "B"]
    assert math.isnan(g["unknown"]["mean_accuracy"])
    assert g["one"]["mean_average_precision"] == pytest.approx(2.6 / 3)
    with pytest.raises(AttrnetError, match="Z"):
        group_metrics(m["attributes"], {"bad": ["A", "Z"]})


def test_prior_thresholds_are_positive_rates_of_known_labels():
    from attrnet.metrics import prior_thresholds
    nan = float("nan")
    labels = np.array([[1, 0, nan], [0, 0, nan], [1, 1, nan], [nan, 0, nan]])
    assert prior_thresholds(labels).tolist() == [2 / 3, 1 / 4, 0.5]  # the last has no known label
