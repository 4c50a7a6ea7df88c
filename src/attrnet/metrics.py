"""Per-attribute metrics for binary attribute prediction with unknown (NaN) labels.

Conventions used by every function here:

* labels: float [N, M] with 1.0 / 0.0 and NaN = unknown; unknown entries are left out of every
  metric (never counted as negatives). probs: float [N, M] in [0, 1].
* A prediction is positive when prob >= threshold.
* Undefined values are float('nan') (``report.to_jsonable`` writes them as null) and are left out
  of every mean (nanmean):
  - a column with no known label: all its metrics are NaN;
  - no known positive: average precision is NaN;
  - no known positive and no predicted positive: F1 is NaN (0/0);
  - known labels all one class: balanced accuracy is the recall of the present class
    (scikit-learn's behaviour; its warning is silenced).
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, f1_score

from attrnet.errors import AttrnetError

NAN = float("nan")
METRIC_KEYS = ("accuracy", "balanced_accuracy", "f1", "average_precision")
TUNABLE = ("accuracy", "balanced_accuracy", "f1")


def nanmean(values: Iterable[float]) -> float:
    """Mean of the defined (non-NaN) values; NaN when there are none, without a warning."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else NAN


def _check(probs: np.ndarray | None, labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    labels = np.asarray(labels, dtype=float)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [N, M], got shape {labels.shape}")
    known = labels[~np.isnan(labels)]
    if known.size and not ((known == 0.0) | (known == 1.0)).all():
        raise ValueError("labels must be 1.0, 0.0 or NaN (unknown); found other values")
    if probs is None:
        return None, labels
    probs = np.asarray(probs, dtype=float)
    if probs.shape != labels.shape:
        raise ValueError(f"probs shape {probs.shape} does not match labels shape {labels.shape}")
    if not np.isfinite(probs[~np.isnan(labels)]).all():
        raise ValueError("probs contain NaN/inf where the label is known")
    return probs, labels


def _thresholds(thresholds: float | Sequence[float] | np.ndarray, m: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=float)
    if t.ndim == 0:
        return np.full(m, float(t))
    if t.shape != (m,):
        raise ValueError(f"thresholds must be a float or an array of {m} values, got shape {t.shape}")
    return t


def _column_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """Metrics of one column given its known entries only."""
    n = int(y.size)
    out = {k: NAN for k in METRIC_KEYS}
    out.update(threshold=float(threshold), positive_rate=NAN, predicted_positive_rate=NAN,
               majority_accuracy=NAN, n_known=n)
    if n == 0:
        return out
    yi = y.astype(int)
    pred = (p >= threshold).astype(int)
    n_pos = int(yi.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-class columns: sklearn warns, we document instead
        out["accuracy"] = float(accuracy_score(yi, pred))
        out["balanced_accuracy"] = float(balanced_accuracy_score(yi, pred))
        out["f1"] = float(f1_score(yi, pred, zero_division=np.nan))
        if n_pos > 0:
            out["average_precision"] = float(average_precision_score(yi, p))
    majority = 1 if 2 * n_pos >= n else 0
    out["majority_accuracy"] = float(accuracy_score(yi, np.full(n, majority)))
    out["positive_rate"] = n_pos / n
    out["predicted_positive_rate"] = float(pred.mean())
    return out


def attribute_metrics(probs: np.ndarray, labels: np.ndarray, names: Sequence[str],
                      thresholds: float | Sequence[float] | np.ndarray = 0.5) -> dict:
    """Accuracy, balanced accuracy, F1 and average precision per attribute, and their means.

    Returns ``{"mean_accuracy", "mean_balanced_accuracy", "mean_f1", "mean_average_precision",
    "mean_majority_accuracy", "n_images", "attributes": {name: {"accuracy", "balanced_accuracy",
    "f1", "average_precision", "threshold", "positive_rate", "predicted_positive_rate",
    "majority_accuracy", "n_known"}}}`` with plain Python numbers; see the module docstring for NaN.
    """
    probs, labels = _check(probs, labels)
    n, m = labels.shape
    if len(names) != m:
        raise ValueError(f"{len(names)} names for {m} label columns")
    t = _thresholds(thresholds, m)
    per: dict[str, dict] = {}
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        per[str(name)] = _column_metrics(probs[known, j], labels[known, j], t[j])
    out: dict = {f"mean_{k}": nanmean([a[k] for a in per.values()])
                 for k in METRIC_KEYS + ("majority_accuracy",)}
    out["n_images"] = int(n)
    out["attributes"] = per
    return out


def majority_accuracy(labels: np.ndarray, names: Sequence[str] | None = None) -> dict:
    """Accuracy of always answering each attribute's most common known value (ties: 1).

    Returns ``{"mean_accuracy", "attributes": {name: {"accuracy", "majority_value", "n_known"}}}``;
    a column with no known label has accuracy NaN and majority_value None and is left out of the
    mean. The dict has the shape ``report.format_table`` accepts as ``baseline``.
    """
    _, labels = _check(None, labels)
    m = labels.shape[1]
    names = [str(j) for j in range(m)] if names is None else [str(x) for x in names]
    if len(names) != m:
        raise ValueError(f"{len(names)} names for {m} label columns")
    per: dict[str, dict] = {}
    for j, name in enumerate(names):
        y = labels[~np.isnan(labels[:, j]), j].astype(int)
        if y.size == 0:
            per[name] = {"accuracy": NAN, "majority_value": None, "n_known": 0}
            continue
        value = 1 if 2 * int(y.sum()) >= y.size else 0
        per[name] = {"accuracy": float(accuracy_score(y, np.full(y.size, value))),
                     "majority_value": value, "n_known": int(y.size)}
    return {"mean_accuracy": nanmean([a["accuracy"] for a in per.values()]), "attributes": per}


def _candidates(p: np.ndarray, grid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds to try on the ascending probabilities `p`, and for each the number of entries
    predicted negative (p < t). Without a grid: one threshold below all probabilities (everything
    positive), the midpoints between consecutive distinct ones, one above all (everything
    negative) and 0.5 itself (so that 0.5 is returned exactly whenever it is among the best)."""
    if grid is not None:
        return grid, np.searchsorted(p, grid, side="left")
    starts = np.flatnonzero(np.concatenate(([True], p[1:] != p[:-1])))  # first index of each value
    u = p[starts]
    hi_t = (u[-1] + 1.0) / 2.0
    hi_t = hi_t if hi_t > u[-1] else np.nextafter(u[-1], np.inf)
    lo_t = min(0.0, float(u[0])) / 2.0 + u[0] / 2.0
    mids = (u[:-1] + u[1:]) / 2.0
    mids = np.where(mids > u[:-1], mids, u[1:])  # adjacent floats: the midpoint may round down
    cand = np.concatenate(([lo_t], mids, [hi_t, 0.5]))
    k = np.concatenate((starts, [p.size, np.searchsorted(p, 0.5, side="left")]))
    return cand, k


def _scores(metric: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Metric per candidate from confusion counts (NaN where undefined is scored 0)."""
    pos, neg = tp + fn, fp + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            s = (tp + tn) / (pos + neg)
        elif metric == "balanced_accuracy":
            tpr, tnr = tp / pos, tn / neg
            s = np.where(pos[0] == 0, tnr, np.where(neg[0] == 0, tpr, (tpr + tnr) / 2.0))
        else:
            s = 2.0 * tp / (2.0 * tp + fp + fn)
    return np.nan_to_num(s.astype(float), nan=0.0)


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, metric: str = "accuracy",
                    grid: bool | Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Per attribute, the threshold (prob >= t is positive) maximising `metric` on known entries.

    metric: "accuracy", "balanced_accuracy" or "f1". grid: None tries the midpoints between
    the sorted distinct probabilities (every distinct decision, plus 0.5), True the grid
    0.01..0.99, or an explicit sequence of thresholds. Ties go to the candidate closest to 0.5;
    a column with no known label gets 0.5. Each column is sorted once and scored with
    cumulative sums (40 attributes x 20,000 images: a few tens of milliseconds).
    """
    if metric not in TUNABLE:
        raise AttrnetError(f"cannot tune thresholds for metric {metric!r}; choose one of {', '.join(TUNABLE)}")
    probs, labels = _check(probs, labels)
    if grid is True:
        grid_arr: np.ndarray | None = np.round(np.arange(1, 100) / 100.0, 2)
    elif grid is None or grid is False:
        grid_arr = None
    else:
        grid_arr = np.sort(np.asarray(grid, dtype=float).ravel())
        if grid_arr.size == 0:
            raise ValueError("grid is empty")
    m = labels.shape[1]
    out = np.full(m, 0.5)
    probs_t, labels_t = np.ascontiguousarray(probs.T), np.ascontiguousarray(labels.T)
    for j in range(m):
        known = ~np.isnan(labels_t[j])
        if not known.any():
            continue
        p, y = probs_t[j][known], labels_t[j][known]
        order = np.argsort(p)
        p, y = p[order], y[order]
        cum_pos = np.concatenate(([0.0], np.cumsum(y)))  # positives among the k smallest probs
        cand, k = _candidates(p, grid_arr)  # k: number predicted negative (p < t)
        fn = cum_pos[k]
        tn = k - fn
        tp = cum_pos[-1] - fn
        fp = (p.size - k) - tp
        s = _scores(metric, tp, fp, fn, tn)
        best = s.max()
        tied = np.flatnonzero(s >= best - 1e-12)
        out[j] = float(cand[tied[np.argmin(np.abs(cand[tied] - 0.5))]])
    return out


def prior_thresholds(labels: np.ndarray) -> np.ndarray:
    """Per attribute, the share of positives among its known labels (0.5 where it has none). With calibrated
    probabilities p(y=1|x), deciding p >= that prior maximises balanced accuracy (the Bayes rule when both
    classes weigh the same), without a validation split to tune on."""
    _, labels = _check(None, labels)
    known = ~np.isnan(labels)
    counts = known.sum(0)
    pos = np.where(known, labels, 0.0).sum(0)
    return np.where(counts > 0, pos / np.maximum(counts, 1), 0.5)


def group_metrics(per_attribute: Mapping[str, Mapping], groups: Mapping[str, Sequence[str]]) -> dict:
    """Mean figures per attribute group.

    per_attribute: the ``"attributes"`` dict of :func:`attribute_metrics` (name -> figures).
    Returns ``{group: {"mean_accuracy", "mean_balanced_accuracy", "mean_f1",
    "mean_average_precision", "attributes": [names]}}`` (nanmean over the group's attributes).
    """
    missing = sorted({n for names in groups.values() for n in names if n not in per_attribute})
    if missing:
        raise AttrnetError(f"attribute group(s) name attribute(s) with no metrics: {', '.join(missing)}; "
                           f"known attributes: {', '.join(per_attribute)}")
    out: dict[str, dict] = {}
    for group, names in groups.items():
        entry: dict = {f"mean_{k}": nanmean([per_attribute[n].get(k, NAN) for n in names])
                       for k in METRIC_KEYS}
        entry["attributes"] = list(names)
        out[str(group)] = entry
    return out


def subgroup_metrics(probs: np.ndarray, labels: np.ndarray, names: Sequence[str],
                     thresholds: float | Sequence[float] | np.ndarray, by_labels: np.ndarray,
                     by_names: Sequence[str]) -> dict:
    """Every metric of :func:`attribute_metrics`, separately for the images whose true label of each `by`
    attribute is 1 and is 0 (images with that label unknown are in neither).

    by_labels: float [N, K] (1.0, 0.0, NaN) of the K attributes named in by_names, same rows as labels.
    Returns ``{by_name: {"1": metrics, "0": metrics, "accuracy_gap": {attribute: acc(1) - acc(0)}}}``
    where each metrics dict is attribute_metrics' (with "mean_majority_accuracy" and per attribute
    "majority_accuracy", the baseline inside that subgroup). A `by` attribute that is also predicted is left out
    of its own subgroups (every image of Male = 1 has Male = 1: a trivial row that would move the means), so
    evaluate's table, its means and the model card all leave it out.
    """
    probs, labels = _check(probs, labels)
    _, by_labels = _check(None, by_labels)
    if by_labels.shape != (labels.shape[0], len(by_names)):
        raise ValueError(f"by_labels shape {by_labels.shape} does not match {labels.shape[0]} rows x "
                         f"{len(by_names)} subgroup attributes")
    out: dict[str, dict] = {}
    names = [str(n) for n in names]
    t = _thresholds(thresholds, len(names))
    for k, by in enumerate(by_names):
        keep = [j for j, n in enumerate(names) if n != by]
        kept = [names[j] for j in keep]
        entry: dict = {}
        for value in (1, 0):
            rows = by_labels[:, k] == value
            entry[str(value)] = attribute_metrics(probs[rows][:, keep], labels[rows][:, keep], kept, t[keep])
        entry["accuracy_gap"] = {n: entry["1"]["attributes"][n]["accuracy"] - entry["0"]["attributes"][n]["accuracy"]
                                 for n in kept}
        out[str(by)] = entry
    return out
