"""Distillation (train.teachers, `attrnet distill`): one student learns from the labels blended with the
mean probability of several trained models, so that what ships is one network with (most of) an ensemble's
accuracy.

The teachers' probabilities are computed once, before training, on every image of the data set (each teacher
through attrnet.inference with its own size, normalisation and test-time augmentation), not per augmented
batch: on a CPU a teacher's forward pass per step would cost about as much as the student's step. Training
targets are then (1 - w) * label + w * p_teachers where the label is known and p_teachers where it is unknown;
binary cross-entropy is linear in its target, so this is (1 - w) BCE(label) + w BCE(teachers) (Hinton et al.
2015 at temperature 1). Validation and test are scored against the labels only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from attrnet.data.table import AttributeTable
from attrnet.engine.evaluate import evaluation_report
from attrnet.errors import AttrnetError
from attrnet.inference import load_model

log = logging.getLogger(__name__)


def distillation_targets(cfg, data, device) -> dict:
    """Set data.targets (an engine.setup.PreparedData) to the labels blended with the mean probability of
    cfg.train.teachers; returns the teachers' and their ensemble's test figures (teacher_report)."""
    probs = teacher_probabilities(cfg.train.teachers, data.table, str(device))
    data.targets = soft_targets(data.table.labels, np.mean(probs, axis=0), cfg.train.distill_weight)
    test = data.indices("test")
    return teacher_report([p[test] for p in probs], data.table.labels[test], data.table.names, cfg.train.teachers)


def teacher_probabilities(teachers: list[str], table: AttributeTable, device: str = "auto",
                          batch_size: int = 256) -> list[np.ndarray]:
    """Each teacher's probabilities [N, M] for every row of `table`, columns in the table's attribute order
    (NaN for an image a teacher could not read). A teacher that lacks one of the attributes is an error."""
    out = []
    paths = [str(p) for p in table.paths]
    for source in teachers:
        model = load_model(source, device=device)
        missing = [n for n in table.names if n not in model.attributes]
        if missing:
            raise AttrnetError(f"train.teachers: {source} does not predict {', '.join(missing[:3])}"
                               f"{' ...' if len(missing) > 3 else ''}; a teacher must know every attribute trained")
        cols = [model.attributes.index(n) for n in table.names]
        result = model.predict(paths, batch_size=batch_size)
        probs = np.full((len(paths), len(cols)), np.nan, dtype=np.float32)
        probs[result.indices] = result.probabilities[:, cols]
        out.append(probs)
        log.info("teacher %s: probabilities for %d images (%s, tta %s)", source, len(result.indices),
                 "x".join(map(str, model.info.image_size)), model.tta)
    return out


def soft_targets(labels: np.ndarray, teacher_mean: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * label + weight * teacher_mean where the label is known, teacher_mean where it is not
    (NaN where neither is known)."""
    known = ~np.isnan(labels)
    blended = (1.0 - weight) * np.nan_to_num(labels) + weight * teacher_mean
    return np.where(known, blended, teacher_mean).astype(np.float32)


def teacher_report(probs: list[np.ndarray], labels: np.ndarray, names: list[str], teachers: list[str]) -> dict:
    """Test figures of each teacher and of their mean (the ensemble), all at 0.5: what distillation starts from."""
    half = np.full(len(names), 0.5)

    def summary(p: np.ndarray) -> dict:
        r = evaluation_report(p, labels, names, half)
        return {k: r[k] for k in ("mean_accuracy", "mean_balanced_accuracy", "mean_f1")}
    return {"teachers": [{"source": str(Path(t)), **summary(p)} for t, p in zip(teachers, probs)],
            "ensemble": summary(np.mean(probs, axis=0)), "thresholds": 0.5, "images": int(len(labels))}
