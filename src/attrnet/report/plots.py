"""Metrics as PNG figures: per-attribute accuracy, training curves, heatmaps (matplotlib, written atomically)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attrnet.atomic import atomic_path

DPI = 130


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    return path


def plot_attribute_accuracy(metrics: Mapping, path: str | Path, title: str = "") -> Path:
    """Horizontal bars of accuracy and balanced accuracy per attribute (sorted by accuracy), the
    majority-class baseline as a marker where present, and the mean accuracy as a vertical line."""
    plt = pyplot()
    attrs: Mapping[str, Mapping] = metrics.get("attributes", {})
    val = lambda a, k: float("nan") if a.get(k) is None else float(a[k])  # noqa: E731
    names = sorted(attrs, key=lambda n: (-1.0 if math.isnan(val(attrs[n], "accuracy"))
                                         else val(attrs[n], "accuracy")))
    acc = np.array([val(attrs[n], "accuracy") for n in names])
    bal = np.array([val(attrs[n], "balanced_accuracy") for n in names])
    maj = np.array([val(attrs[n], "majority_accuracy") for n in names])
    m = len(names)
    fig, ax = plt.subplots(figsize=(8.0, 1.8 + 0.26 * max(m, 4)))
    y = np.arange(m)
    h = 0.38
    ax.barh(y + h / 2, acc, height=h, color="#1f77b4", label="accuracy")
    ax.barh(y - h / 2, bal, height=h, color="#ff7f0e", alpha=0.85, label="balanced accuracy")
    if np.isfinite(maj).any():
        ax.scatter(maj, y, marker="|", s=160, linewidths=2.2, color="black", zorder=3,
                   label="majority-class baseline")
    mean_acc = metrics.get("mean_accuracy")
    if mean_acc is not None and math.isfinite(float(mean_acc)):
        ax.axvline(float(mean_acc), color="crimson", linestyle="--", linewidth=1.2,
                   label=f"mean accuracy = {float(mean_acc):.3f}")
    shown = np.concatenate([acc, bal, maj])
    shown = shown[np.isfinite(shown)]
    lo = 0.0 if shown.size == 0 else max(0.0, min(0.5, math.floor((shown.min() - 0.05) * 10) / 10))
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(-0.7, m - 0.3)
    ax.set_yticks(y, names, fontsize=8 if m <= 50 else 6)
    ax.set_xlabel("score" + (f" (axis starts at {lo:.1f})" if lo > 0 else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"Per-attribute accuracy ({m} attributes)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.9 / (1.8 + 0.26 * max(m, 4))), ncol=2,
              fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def epoch_axis(epochs: Sequence[float]) -> tuple[tuple[float, float], list[int]]:
    """x limits and whole-number ticks for an epoch axis. Half an epoch of room each side (a single epoch
    would otherwise get matplotlib's 0.95..1.05 and ticks at 0.96, 0.98, ...)."""
    from matplotlib.ticker import MaxNLocator

    if len(epochs) == 0:
        return (0.5, 1.5), [1]
    first, last = float(min(epochs)), float(max(epochs))
    pad = max(0.5, 0.025 * (last - first))
    lo, hi = first - pad, last + pad
    ticks = MaxNLocator(nbins=10, steps=[1, 2, 5, 10], integer=True, min_n_ticks=1).tick_values(lo, hi)
    return (lo, hi), [int(t) for t in ticks if lo <= t <= hi]


def lr_axis(lrs: Sequence[float]) -> tuple[str, tuple[float, float]]:
    """Scale ("log" or "linear") and limits for the learning-rate axis. Log only where the rate spans at
    least a factor of 10 and never reaches 0; otherwise linear from 0, so a single point, a constant rate
    or a schedule ending at 0 never gets matplotlib's symmetric (negative) limits around one value."""
    values = np.asarray(lrs, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "linear", (0.0, 1.0)
    low, high = float(values.min()), float(values.max())
    if low > 0 and high / low >= 10:
        return "log", (low / 1.5, high * 1.5)
    top = 1.2 * high if high > 0 else 1.0  # room above a flat line so it does not merge with the frame
    return "linear", (min(0.0, low), top)


def training_curves_figure(rows: Sequence[Mapping]) -> Any:
    """The figure of plot_training_curves (a matplotlib Figure; the caller closes it)."""
    plt = pyplot()

    def series(key: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for i, r in enumerate(rows):
            v = r.get(key)
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(float(r.get("epoch", i + 1)))
                ys.append(float(v))
        return np.array(xs), np.array(ys)

    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "epoch" and series(k)[1].size]
    loss_keys = [k for k in keys if "loss" in k]
    score_keys = [k for k in keys if k not in loss_keys and any(
        s in k for s in ("accuracy", "f1", "average_precision"))]
    if any("mean" in k for k in score_keys):  # per-attribute figures would drown the means
        score_keys = [k for k in score_keys if "mean" in k]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    style = {"marker": "o", "markersize": 3} if len(rows) <= 60 else {}
    for k in loss_keys:
        ax1.plot(*series(k), label=k, **style)
    if "lr" in keys:
        _plot_lr(ax1.twinx(), *series("lr"), style)
    for k in score_keys:
        ax2.plot(*series(k), label=k, **style)
    (xlo, xhi), xticks = epoch_axis([float(r.get("epoch", i + 1)) for i, r in enumerate(rows)])
    for ax, name, ks in ((ax1, "loss", loss_keys), (ax2, "score", score_keys)):
        ax.set_xlim(xlo, xhi)
        ax.set_xticks(xticks)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ks:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name} values", ha="center", va="center", transform=ax.transAxes)
    ax1.set_title("losses")
    ax2.set_title("accuracies")
    fig.tight_layout()
    return fig


def _plot_lr(axr: Any, epochs: np.ndarray, lrs: np.ndarray, style: Mapping) -> None:
    axr.plot(epochs, lrs, color="grey", linestyle=":", label="lr", **style)
    scale, limits = lr_axis(lrs)
    axr.set_yscale(scale)
    axr.set_ylim(*limits)
    axr.set_ylabel("learning rate", color="grey")
    axr.legend(loc="lower left", fontsize=8)  # losses fall to the right: this corner is rarely in their way


def plot_training_curves(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Two panels against epoch (whole-number ticks): every "*loss*" key (with "lr" on a twin axis, see
    lr_axis) and every accuracy/F1/AP key (only the "mean" ones when there are some). Missing or
    non-numeric values are skipped; a row without "epoch" counts as epoch index + 1."""
    return save_figure(training_curves_figure(rows), path)


def _order_by_groups(col_labels: list[str], col_groups: Mapping[str, Sequence[str]]
                     ) -> tuple[list[int], list[tuple[str, int, int]]]:
    """Column order following the groups (ungrouped columns last, as "other") and the
    (group, start, stop) spans in that order."""
    order: list[int] = []
    spans: list[tuple[str, int, int]] = []
    index = {n: i for i, n in enumerate(col_labels)}
    for g, names in list(col_groups.items()) + [("other", [n for n in col_labels if not any(
            n in v for v in col_groups.values())])]:
        cols = [index[n] for n in names if n in index and index[n] not in order]
        if cols:
            spans.append((str(g), len(order), len(order) + len(cols)))
            order += cols
    return order, spans


def plot_heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                 path: str | Path, title: str = "", cmap: str = "viridis",
                 col_groups: Mapping[str, Sequence[str]] | None = None, symmetric: bool = False) -> Path:
    """Heatmap with a colorbar. col_groups reorders the columns by group, draws the boundaries and
    writes the group names on top (and does the same to the rows when they carry the same labels).
    symmetric=True uses limits centred at 0 (a diverging "RdBu_r" unless another cmap is given)."""
    plt = pyplot()
    mat = np.asarray(matrix, dtype=float)
    rows, cols = [str(r) for r in row_labels], [str(c) for c in col_labels]
    if mat.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix shape {mat.shape} does not match {len(rows)} row x {len(cols)} column labels")
    spans: list[tuple[str, int, int]] = []
    same_axes = rows == cols
    if col_groups:
        order, spans = _order_by_groups(cols, col_groups)
        mat, cols = mat[:, order], [cols[i] for i in order]
        if same_axes:
            mat, rows = mat[order], [rows[i] for i in order]
    nr, nc = mat.shape
    fig, ax = plt.subplots(figsize=(min(26.0, max(6.0, 3.0 + 0.17 * nc)), min(26.0, max(4.0, 2.8 + 0.17 * nr))))
    kw: dict[str, Any] = {}
    if symmetric:
        cmap = "RdBu_r" if cmap == "viridis" else cmap
        vmax = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
        kw = {"vmin": -(vmax or 1.0), "vmax": vmax or 1.0}
    cm = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cm, aspect="auto", interpolation="nearest", **kw)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fs = lambda n: 8 if n <= 40 else (7 if n <= 100 else 5)  # noqa: E731
    ax.set_xticks(np.arange(nc), cols, rotation=90, fontsize=fs(nc))
    ax.set_yticks(np.arange(nr), rows, fontsize=fs(nr))
    for _, start, stop in spans[1:]:
        ax.axvline(start - 0.5, color="white" if not symmetric else "black", linewidth=1.5)
        if same_axes:
            ax.axhline(start - 0.5, color="white" if not symmetric else "black", linewidth=1.5)
    if spans:
        top = ax.secondary_xaxis("top")
        top.set_xticks([(a + b - 1) / 2 for _, a, b in spans], [g for g, _, _ in spans],
                       rotation=45, ha="left", fontsize=8)
        top.tick_params(length=0)
    ax.set_title(title, pad=60 if spans else 6)
    fig.tight_layout()
    return save_figure(fig, path)


def cosine_similarity_matrix(W: np.ndarray) -> np.ndarray:
    """Cosine similarity [M, M] between the columns of W [D, M] (a zero column scores 0)."""
    from sklearn.metrics.pairwise import cosine_similarity

    W = np.asarray(W, dtype=float)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D [D, M], got shape {W.shape}")
    return np.clip(cosine_similarity(W.T), -1.0, 1.0)
