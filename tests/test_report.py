"""Tests of attrnet.report: JSON conversion, the text table and the PNG figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from attrnet.metrics import attribute_metrics, group_metrics, majority_accuracy
from attrnet.report.jsonable import to_jsonable
from attrnet.report.plots import (cosine_similarity_matrix, epoch_axis, lr_axis, plot_attribute_accuracy, plot_heatmap,
                                  plot_training_curves, training_curves_figure)
from attrnet.report.tables import format_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _fake(m: int = 40, n: int = 500, seed: int = 0) -> tuple[dict, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    names = [f"Attribute_Name_{j:02d}" for j in range(m)]
    labels = (rng.random((n, m)) < rng.uniform(0.05, 0.6, m)).astype(float)
    probs = np.clip(0.4 * labels + rng.normal(0.3, 0.2, (n, m)), 0, 1)
    labels[rng.random((n, m)) < 0.1] = NAN
    labels[:, -1] = NAN  # one all-unknown attribute
    metrics = attribute_metrics(probs, labels, names)
    metrics["groups"] = group_metrics(metrics["attributes"], {"first": names[: m // 2], "second": names[m // 2:]})
    return metrics, names, labels


def _check_png(path: Path, min_side: int = 300) -> tuple[int, int]:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert min_side <= h <= 8000 and min_side <= w <= 8000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    return h, w


def test_to_jsonable_round_trip() -> None:
    obj = {"a": np.float32(1.5), "b": np.int64(3), "c": np.array([1.0, np.nan, np.inf]), "d": NAN,
           "e": (np.bool_(True), [np.float64(np.nan), {"f": np.arange(3)}]), np.int64(7): "key",
           "g": Path("x/y.png"), "h": None, "i": "text"}
    out = to_jsonable(obj)
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back == {"a": 1.5, "b": 3, "c": [1.0, None, None], "d": None, "e": [True, [None, {"f": [0, 1, 2]}]],
                    "7": "key", "g": "x/y.png", "h": None, "i": "text"}
    metrics, _, _ = _fake(m=5)
    assert json.loads(json.dumps(to_jsonable(metrics), allow_nan=False))["attributes"][
        "Attribute_Name_04"]["accuracy"] is None


def _line(text: str, first_word: str) -> list[str]:
    return next(line for line in text.splitlines() if line.split() and line.split()[0] == first_word).split()


def test_format_table() -> None:
    metrics, names, labels = _fake(m=6)
    text = format_table(metrics)
    for n in names:
        assert n in text
    mean_line = next(line for line in text.splitlines() if line.startswith("MEAN"))
    assert f"{metrics['mean_accuracy']:.3f}" in mean_line
    assert f"{metrics['mean_f1']:.3f}" in mean_line
    last = next(line for line in text.splitlines() if line.startswith(names[-1]))
    assert last.split()[1] == "-"  # NaN accuracy of the all-unknown attribute
    main = text.split("\n\n")[0].splitlines()
    assert len({len(line) for line in main}) == 1  # aligned columns
    assert "first" in text and "second" in text  # group table
    with_base = format_table(metrics, baseline=majority_accuracy(labels, names))
    assert _line(with_base, "attribute")[:4] == ["attribute", "accuracy", "base_acc", "gain"]
    base = majority_accuracy(labels, names)["mean_accuracy"]
    assert _line(with_base, "MEAN")[2:4] == [f"{base:.3f}", f"{metrics['mean_accuracy'] - base:+.3f}"]


def test_format_table_shows_the_majority_baseline_beside_the_accuracy() -> None:
    metrics, names, _ = _fake(m=40)
    text = format_table(metrics)
    assert _line(text, "attribute")[:4] == ["attribute", "accuracy", "majority", "gain"]
    not_beaten = 0
    for n in names[:-1]:
        a = metrics["attributes"][n]
        gain = a["accuracy"] - a["majority_accuracy"]
        assert _line(text, n)[1:4] == [f"{a['accuracy']:.3f}", f"{a['majority_accuracy']:.3f}", f"{gain:+.3f}"]
        not_beaten += round(gain, 3) <= 0
    assert _line(text, names[-1])[1:4] == ["-", "-", "-"]  # no known label: no baseline either
    mean_gain = metrics["mean_accuracy"] - metrics["mean_majority_accuracy"]
    assert _line(text, "MEAN")[1:4] == [f"{metrics['mean_accuracy']:.3f}",
                                        f"{metrics['mean_majority_accuracy']:.3f}", f"{mean_gain:+.3f}"]
    assert 0 < not_beaten < 39  # the fake data has both kinds, so the count below is a real check
    assert f"{not_beaten} of 39 attributes with known labels do not beat it" in text
    first = metrics["groups"]["first"]["attributes"]
    group_majority = np.nanmean([metrics["attributes"][n]["majority_accuracy"] for n in first])
    assert _line(text, "first")[2:4] == [f"{metrics['groups']['first']['mean_accuracy']:.3f}",
                                         f"{group_majority:.3f}"]
    main = text.split("\n\n")[0].splitlines()
    assert len(main) == 40 + 4 and len({len(line) for line in main}) == 1
    assert max(len(line) for line in main) <= 100  # fits a terminal at 40 attributes


def test_format_table_without_majority_figures_leaves_the_columns_out() -> None:
    # e.g. a metrics.json written before the baseline was added
    metrics, names, _ = _fake(m=5)
    for a in metrics["attributes"].values():
        del a["majority_accuracy"]
    del metrics["mean_majority_accuracy"]
    text = format_table(metrics)
    assert _line(text, "attribute") == ["attribute", "accuracy", "bal_acc", "f1", "avg_prec", "thresh",
                                        "pos_rate", "n_known"]
    assert "majority" not in text and "gain" not in text
    assert _line(text, names[0])[1:3] == [f"{metrics['attributes'][names[0]]['accuracy']:.3f}",
                                          f"{metrics['attributes'][names[0]]['balanced_accuracy']:.3f}"]
    assert format_table({"attributes": {}}).splitlines()[0].split() == _line(text, "attribute")


def test_plot_attribute_accuracy(tmp_path: Path) -> None:
    metrics, _, _ = _fake(m=40)
    out = plot_attribute_accuracy(metrics, tmp_path / "acc.png", title="test")
    assert out == tmp_path / "acc.png"
    h, w = _check_png(out)
    assert h > w  # grows with the number of attributes
    small, _, _ = _fake(m=3)
    for a in small["attributes"].values():
        a.pop("majority_accuracy")
    _check_png(plot_attribute_accuracy(small, tmp_path / "small.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "small.png"]


def test_plot_training_curves(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.2 / e, "val/mean_accuracy": 0.8 + 0.01 * e,
             "val/mean_balanced_accuracy": 0.7 + 0.01 * e, "lr": 0.1 * 0.9 ** e} for e in range(1, 11)]
    del rows[2]["val/loss"]
    rows[4]["val/mean_accuracy"] = None
    _check_png(plot_training_curves(rows, tmp_path / "curves.png"))
    _check_png(plot_training_curves([{"epoch": 1, "train/loss": 0.5}], tmp_path / "one.png"))
    _check_png(plot_training_curves([], tmp_path / "empty.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "empty.png", "one.png"]


def _lr_axes(fig):
    return next(ax for ax in fig.axes if ax.get_ylabel() == "learning rate")


def test_one_epoch_curves_have_whole_epoch_ticks_and_no_negative_lr() -> None:
    import matplotlib.pyplot as plt

    # what one epoch of a cosine schedule gives: the lr has reached 0 at the end of the only epoch
    fig = training_curves_figure([{"epoch": 1, "train/loss": 0.6, "lr": 0.0, "val/loss": 0.65,
                                   "val/mean_accuracy": 0.7}])
    try:
        for ax in fig.axes[:2]:
            assert ax.get_xlim() == (0.5, 1.5)
            assert list(ax.get_xticks()) == [1.0]
        lr_ax = _lr_axes(fig)
        assert lr_ax.get_yscale() == "linear" and lr_ax.get_ylim() == (0.0, 1.0)
    finally:
        plt.close(fig)


def test_lr_axis_of_a_decaying_schedule_is_logarithmic() -> None:
    import matplotlib.pyplot as plt

    lrs = [0.1 * 0.5 ** e for e in range(1, 8)]
    fig = training_curves_figure([{"epoch": e, "train/loss": 1 / e, "lr": lr} for e, lr in enumerate(lrs, 1)])
    try:
        lr_ax = _lr_axes(fig)
        assert lr_ax.get_yscale() == "log"
        lo, hi = lr_ax.get_ylim()
        assert lo == pytest.approx(min(lrs) / 1.5) and hi == pytest.approx(max(lrs) * 1.5)
        assert fig.axes[0].get_xlim() == (0.5, 7.5) and list(fig.axes[0].get_xticks()) == list(range(1, 8))
    finally:
        plt.close(fig)


@pytest.mark.parametrize("lrs, scale, limits", [
    ([0.01], "linear", (0.0, 0.012)),  # a single point: the line sits inside, the axis starts at 0
    ([0.01] * 5, "linear", (0.0, 0.012)),  # a constant rate: the same
    ([0.1, 0.05, 0.0], "linear", (0.0, 0.12)),  # cosine to 0: no log axis, no negative part
    ([0.1, 0.02], "linear", (0.0, 0.12)),  # less than a factor of 10 apart
    ([0.1, 0.01], "log", (0.01 / 1.5, 0.15)),
    ([NAN, 0.0], "linear", (0.0, 1.0)),  # only zeros
    ([], "linear", (0.0, 1.0)),
])
def test_lr_axis(lrs, scale, limits) -> None:
    got_scale, got_limits = lr_axis(lrs)
    assert got_scale == scale
    assert got_limits == pytest.approx(limits)


@pytest.mark.parametrize("epochs, limits, ticks", [
    ([1], (0.5, 1.5), [1]),
    ([3, 4], (2.5, 4.5), [3, 4]),
    (range(1, 11), (0.5, 10.5), list(range(1, 11))),
    (range(1, 31), (1 - 0.725, 30.725), list(range(5, 31, 5))),  # 2.5 % of the span each side past 20
    (range(1, 201), (1 - 4.975, 204.975), list(range(0, 201, 50))),
    ([], (0.5, 1.5), [1]),
])
def test_epoch_axis(epochs, limits, ticks) -> None:
    got_limits, got_ticks = epoch_axis(list(epochs))
    assert got_limits == pytest.approx(limits)
    assert got_ticks == ticks and all(isinstance(t, int) for t in got_ticks)


def test_plot_heatmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"attr_{j:02d}" for j in range(40)]
    groups = {"g1": names[::3], "g2": names[1::3]}  # the rest is "other"
    S = np.abs(rng.normal(size=(8, 40)))
    S[0, 0] = NAN
    _check_png(plot_heatmap(S, [f"latent {i}" for i in range(8)], names, tmp_path / "S.png",
                            title="S", col_groups=groups))
    C = cosine_similarity_matrix(rng.normal(size=(16, 40)))
    _check_png(plot_heatmap(C, names, names, tmp_path / "sim.png", title="sharing", col_groups=groups,
                            symmetric=True))
    big = [f"a{j}" for j in range(90)]
    _check_png(plot_heatmap(rng.normal(size=(90, 90)), big, big, tmp_path / "big.png", symmetric=True))
    with pytest.raises(ValueError):
        plot_heatmap(S, names[:8], names[:39], tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.png", "big.png", "sim.png"]


def test_cosine_similarity_matrix() -> None:
    W = np.array([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 1.0]])
    C = cosine_similarity_matrix(W)
    assert C.shape == (4, 4)
    np.testing.assert_allclose(C, C.T)
    assert C[0, 1] == pytest.approx(1.0)  # parallel columns
    assert C[0, 3] == pytest.approx(0.0)  # orthogonal columns
    assert C[0, 0] == pytest.approx(1.0)
    assert np.all(C[2] == 0.0) and not math.isnan(C[2, 2])  # zero column
