"""Metrics as text tables: per attribute beside the majority baseline, per group, per subgroup."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from attrnet.metrics import nanmean


def _fmt(x: Any) -> str:
    """One table cell: "-" for a missing or non-finite number, strings as they are."""
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.3f}"
    return str(x)


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _signed(x: float) -> str | None:
    """A gain with its sign, so a loss against the baseline stands out in a column of numbers."""
    return f"{x:+.3f}" if math.isfinite(x) else None


def _baseline_acc(baseline: Mapping, name: str) -> float:
    v = baseline.get("attributes", {}).get(name)
    if isinstance(v, Mapping):
        v = v.get("accuracy")
    return _num(v)


def _table(header: list[str], rows: list[list[Any]], footer: list[Any] | None = None) -> list[str]:
    """Left-aligned first column, right-aligned numbers, rules under the header and above the footer.
    Each column is as wide as its widest cell, so the table stays narrow at 40 attributes."""
    body = [[_fmt(c) for c in r] for r in rows + ([footer] if footer else [])]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(  # noqa: E731
        [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [line(header), rule] + [line(r) for r in body[:len(rows)]]
    return out + ([rule, line(body[-1])] if footer else [])


@dataclass
class _Baseline:
    """The accuracy each attribute is compared with: the column title, the figure per attribute, the mean."""

    title: str
    per_attribute: dict[str, float]
    mean: float


def _find_baseline(metrics: Mapping, baseline: Mapping | None) -> _Baseline | None:
    """An explicit baseline, else the result's own majority-class figures (evaluation_report adds them);
    None when there are neither (e.g. an older metrics.json), and the table then goes without."""
    attrs: Mapping[str, Mapping] = metrics.get("attributes", {})
    if baseline is not None:
        per = {n: _baseline_acc(baseline, n) for n in attrs}
        return _Baseline("base_acc", per, _num(baseline.get("mean_accuracy")))
    if not attrs or not any("majority_accuracy" in a for a in attrs.values()):
        return None
    per = {n: _num(a.get("majority_accuracy")) for n, a in attrs.items()}
    mean = metrics.get("mean_majority_accuracy")
    return _Baseline("majority", per, nanmean(per.values()) if mean is None else float(mean))


def _attribute_rows(attrs: Mapping[str, Mapping], base: _Baseline | None) -> list[list[Any]]:
    rows = []
    for name, a in attrs.items():
        acc = _num(a.get("accuracy"))
        beside = [] if base is None else [base.per_attribute[name], _signed(acc - base.per_attribute[name])]
        rows.append([name, acc, *beside, a.get("balanced_accuracy"), a.get("f1"), a.get("average_precision"),
                     a.get("threshold"), a.get("positive_rate"), a.get("n_known")])
    return rows


def _mean_row(metrics: Mapping, base: _Baseline | None) -> list[Any]:
    acc = _num(metrics.get("mean_accuracy"))
    beside = [] if base is None else [base.mean, _signed(acc - base.mean)]
    return ["MEAN", acc, *beside, metrics.get("mean_balanced_accuracy"), metrics.get("mean_f1"),
            metrics.get("mean_average_precision"), None, None, metrics.get("n_images")]


def _baseline_note(attrs: Mapping[str, Mapping], base: _Baseline) -> list[str]:
    """What the baseline column means, and how many attributes fail to beat it (the trust question).
    Gains are counted as printed (3 decimals), so the count agrees with the column."""
    gains = [round(_num(a.get("accuracy")) - base.per_attribute[n], 3) for n, a in attrs.items()]
    known = [g for g in gains if math.isfinite(g)]
    what = ("accuracy of always answering the attribute's more common value" if base.title == "majority"
            else "accuracy of the baseline")
    return [f"{base.title} = {what}; gain = accuracy - {base.title}",
            f"{sum(g <= 0 for g in known)} of {len(known)} attributes with known labels do not beat it (gain <= 0)"]


def _group_table(groups: Mapping[str, Mapping], base: _Baseline | None) -> list[str]:
    header = ["group", "n_attr", "accuracy"] + ([] if base is None else [base.title]) + [
        "bal_acc", "f1", "avg_prec"]
    rows = []
    for g, v in groups.items():
        names = v.get("attributes", [])
        beside = [] if base is None else [nanmean(base.per_attribute.get(n, float("nan")) for n in names)]
        rows.append([g, len(names), v.get("mean_accuracy"), *beside, v.get("mean_balanced_accuracy"),
                     v.get("mean_f1"), v.get("mean_average_precision")])
    return ["groups (means over each group's attributes)"] + _table(header, rows)


def format_table(metrics: Mapping, baseline: Mapping | None = None) -> str:
    """Fixed-width table: one row per attribute and a final MEAN row; NaN printed as "-".

    Beside the accuracy go a baseline accuracy and the gain over it: ``baseline`` when given (the shape of
    ``metrics.majority_accuracy(...)``), else the result's own "majority_accuracy" figures; without
    either the two columns are left out. If ``metrics`` has "groups" (``metrics.group_metrics``), a table
    of group means follows.
    """
    attrs: Mapping[str, Mapping] = metrics.get("attributes", {})
    base = _find_baseline(metrics, baseline)
    header = ["attribute", "accuracy"] + ([] if base is None else [base.title, "gain"]) + [
        "bal_acc", "f1", "avg_prec", "thresh", "pos_rate", "n_known"]
    lines = _table(header, _attribute_rows(attrs, base), _mean_row(metrics, base))
    if base is not None:
        lines += [""] + _baseline_note(attrs, base)
    groups: Mapping[str, Mapping] = metrics.get("groups") or {}
    if groups:
        lines += [""] + _group_table(groups, base)
    return "\n".join(lines) + "\n"


def format_subgroup_table(subgroups: Mapping[str, Mapping]) -> str:
    """One fixed-width table per subgroup attribute (``metrics.subgroup_metrics``): each metric for the images
    whose true label is 1 and is 0, and the accuracy gap (1 - 0), one row per attribute and a MEAN row."""
    out: list[str] = []
    for by, entry in subgroups.items():
        one, zero = entry["1"], entry["0"]
        out += ["", f"subgroups by the true label of {by}: {by}=1 ({one.get('n_images', 0)} images, majority "
                    f"baseline {_fmt(one.get('mean_majority_accuracy'))}), {by}=0 ({zero.get('n_images', 0)} images, "
                    f"majority baseline {_fmt(zero.get('mean_majority_accuracy'))})"]
        header = ["attribute", "acc|1", "acc|0", "gap", "bal|1", "bal|0", "f1|1", "f1|0", "ap|1", "ap|0", "n|1", "n|0"]
        rows = []
        for name, a1 in one.get("attributes", {}).items():
            a0 = zero["attributes"][name]
            rows.append([name, a1.get("accuracy"), a0.get("accuracy"), _signed(_num(entry["accuracy_gap"][name])),
                         a1.get("balanced_accuracy"), a0.get("balanced_accuracy"), a1.get("f1"), a0.get("f1"),
                         a1.get("average_precision"), a0.get("average_precision"), a1.get("n_known"), a0.get("n_known")])
        mean_gap = _num(one.get("mean_accuracy")) - _num(zero.get("mean_accuracy"))
        footer = ["MEAN", one.get("mean_accuracy"), zero.get("mean_accuracy"), _signed(mean_gap),
                  one.get("mean_balanced_accuracy"), zero.get("mean_balanced_accuracy"), one.get("mean_f1"),
                  zero.get("mean_f1"), one.get("mean_average_precision"), zero.get("mean_average_precision"),
                  one.get("n_images"), zero.get("n_images")]
        out += _table(header, rows, footer)
    return "\n".join(out).lstrip("\n")
