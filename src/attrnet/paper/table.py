"""The paper's Table III (Clothing Attributes Dataset) and attrnet's version of it, row by row.

Abdulnabi et al. score 23 binary clothing attributes in four groups. Each row of the table is a method; each
cell the mean accuracy over a group's attributes. The paper does not say how it counted: its CRF row (83.95)
is below what always answering the majority scores with plain accuracy on these attributes (about 0.85), so
it most likely scored class-balanced test sets, as Chen et al. did. attrnet therefore reports both, per
group: mean accuracy (at the thresholds the row uses, and at 0.5) and mean balanced accuracy (the mean of
the true-positive and true-negative rates), and holds the balanced figure against the paper's.

score_row turns one method's probabilities on one split into its cells; summarize averages the splits (mean
and standard deviation); format_markdown writes the table with the paper's figures beside attrnet's.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from attrnet import metrics

# The paper's 23 attributes in its four groups, as attrnet's clothing reader names them (gender is `female`,
# skin exposure `high_skin_exposure`; attrnet.data.clothing).
PAPER_GROUPS: dict[str, list[str]] = {
    "colours": ["black", "blue", "brown", "cyan", "gray", "green", "many_colors", "red", "purple", "white",
                "yellow"],
    "patterns": ["pattern_floral", "pattern_graphics", "pattern_plaid", "pattern_solid", "pattern_stripe",
                 "pattern_spot"],
    "parts": ["necktie", "scarf", "placket", "collar"],
    "appearance": ["high_skin_exposure", "female"],
}
PAPER_ATTRIBUTES: list[str] = [a for members in PAPER_GROUPS.values() for a in members]

# Table III of the paper (accuracy %, per group and over all 23), in its row order.
PAPER_TABLE: dict[str, dict[str, float]] = {
    "CRF (Chen et al. 2012)": {"colours": 85.00, "patterns": 84.33, "parts": 81.25, "appearance": 82.50,
                               "all": 83.95},
    "S-extract": {"colours": 81.84, "patterns": 82.07, "parts": 67.51, "appearance": 69.25, "all": 78.31},
    "M-extract": {"colours": 84.98, "patterns": 89.89, "parts": 81.41, "appearance": 81.03, "all": 85.29},
    "S-CNN": {"colours": 90.50, "patterns": 92.90, "parts": 87.00, "appearance": 89.57, "all": 90.43},
    "M-CNN": {"colours": 91.72, "patterns": 94.26, "parts": 87.96, "appearance": 91.51, "all": 91.70},
    "MG-CNN": {"colours": 93.12, "patterns": 95.37, "parts": 88.65, "appearance": 91.93, "all": 92.82},
}

# What each of attrnet's rows is, in the table's order (the keys of a paper-table result's "rows").
ROW_TEXT: dict[str, str] = {
    "majority": "the majority answer of the training split, for every image",
    "S-extract": "frozen ImageNet features + one squared-hinge classifier per attribute",
    "M-extract": "frozen ImageNet features + the latent-task layer with the 4 groups (alternating solver)",
    "S-CNN": "fine-tuned network, one classifier per attribute",
    "M-CNN (solver)": "the latent-task layer without groups (one group of all 23), fitted by the alternating solver "
                      "on S-CNN's fine-tuned features",
    "MG-CNN (solver)": "the latent-task layer with the 4 groups, fitted by the alternating solver on S-CNN's "
                       "fine-tuned features",
    "M-CNN": "fine-tuned end to end through the latent-task layer, no groups (one group of all 23)",
    "MG-CNN": "fine-tuned end to end through the latent-task layer with the 4 groups (configs/clothing-paper.yaml)",
}
CELLS = tuple(PAPER_GROUPS) + ("all",)


def score_row(probs: np.ndarray, labels: np.ndarray, names: Sequence[str], thresholds,
              groups: Mapping[str, Sequence[str]] = PAPER_GROUPS) -> dict:
    """One method on one split: {"accuracy", "balanced_accuracy", "accuracy_at_0.5",
    "balanced_accuracy_at_0.5"}, each {group: mean over its attributes, ..., "all": mean over every
    attribute}. Unknown labels are left out of every figure (attrnet.metrics)."""
    out = {}
    for suffix, t in (("", thresholds), ("_at_0.5", 0.5)):
        m = metrics.attribute_metrics(probs, labels, list(names), t)
        per = m["attributes"]
        for key in ("accuracy", "balanced_accuracy"):
            cells = {g: metrics.nanmean([per[a][key] for a in members]) for g, members in groups.items()}
            cells["all"] = m[f"mean_{key}"]
            out[key + suffix] = cells
    return out


def majority_probs(train_labels: np.ndarray, n: int) -> np.ndarray:
    """The constant predictor: for every image, 1.0 where the attribute's known training labels are mostly
    positive (ties: positive, as metrics.majority_accuracy), else 0.0."""
    known = ~np.isnan(train_labels)
    pos = np.where(known, train_labels, 0).sum(0)
    answer = (2 * pos >= known.sum(0)).astype(float)
    return np.tile(answer, (n, 1))


def summarize(per_split: Sequence[Mapping[str, dict]]) -> dict:
    """Rows of several splits -> {row: {figure: {cell: [mean, sd, n]}}} (sd with ddof=1; 0 for one split)."""
    rows: dict[str, dict] = {}
    for split_rows in per_split:
        for row, figures in split_rows.items():
            for figure, cells in figures.items():
                for cell, value in cells.items():
                    rows.setdefault(row, {}).setdefault(figure, {}).setdefault(cell, []).append(value)
    out: dict[str, dict] = {}
    for row, figures in rows.items():
        out[row] = {}
        for figure, cells in figures.items():
            out[row][figure] = {}
            for cell, values in cells.items():
                v = np.asarray(values, dtype=float)
                sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
                out[row][figure][cell] = [float(v.mean()), sd, int(v.size)]
    return out


def _cell(stat: Sequence[float]) -> str:
    mean, sd, n = stat
    return f"{100 * mean:.2f}" if n < 2 else f"{100 * mean:.2f} ± {100 * sd:.2f}"


def format_markdown(summary: Mapping[str, Mapping], figure: str = "balanced_accuracy",
                    paper: Mapping[str, Mapping[str, float]] = PAPER_TABLE) -> str:
    """attrnet's rows (figure: one of score_row's keys, in %) under the paper's, in the paper's layout."""
    head = "| method | " + " | ".join(f"{g} ({len(PAPER_GROUPS[g])})" for g in PAPER_GROUPS) + " | all 23 |"
    lines = [head, "|---" * (len(CELLS) + 1) + "|"]
    for name, cells in paper.items():
        lines.append(f"| paper: {name} | " + " | ".join(f"{cells[c]:.2f}" for c in CELLS) + " |")
    for row, figures in summary.items():
        if figure in figures:
            lines.append(f"| attrnet: {row} | " + " | ".join(_cell(figures[figure][c]) for c in CELLS) + " |")
    return "\n".join(lines)
