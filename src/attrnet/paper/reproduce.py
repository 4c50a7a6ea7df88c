"""`attrnet paper-table`: the paper's Table III reproduced with attrnet on seeded splits of the Clothing
Attributes Dataset.

The config (configs/clothing-paper.yaml) is the MG-CNN recipe: the 23 attributes in the paper's 4 groups, a
backbone from ImageNet weights fine-tuned through the latent-task layer (model.head: latent). Each of the
other rows changes only what the paper's row changes. On every split (data.split_seed = the split's number):

  majority    the majority answer of the training part, for every test image
  S-extract   the backbone's ImageNet features, frozen + one squared-hinge classifier per attribute
  M-extract   the same features + the latent-task layer with the groups (the alternating solver)
  S-CNN       the network fine-tuned with one classifier per attribute (model.head: independent)
  M-CNN       fine-tuned end to end through the latent-task layer, all 23 attributes in one group
  MG-CNN      fine-tuned end to end through the latent-task layer with the paper's 4 groups
  M-CNN (solver), MG-CNN (solver)   the alternating solver on S-CNN's fine-tuned features, one group / the 4

The solver rows pick their penalties (mtl.grid) and every row its thresholds (train.threshold_metric) on the
split's validation part. Fine-tuned runs are ordinary run folders, OUT/split<k>/<row>/; a finished one is
reused and one stopped part-way resumed, so the command can be stopped and run again. The frozen ImageNet
features do not depend on the split and are computed once (OUT/imagenet-features.pt). The result goes to
OUT/table.json (every split, row, figure and group) and OUT/table.md (the table beside the paper's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from attrnet import atomic, model_file
from attrnet.config import Config
from attrnet.device import resolve_device
from attrnet.engine.evaluate import predict_probs
from attrnet.engine.run_folder import check_run_folder
from attrnet.engine.setup import PreparedData, images_for_device, make_loader, prepare_data
from attrnet.engine.train import fit
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import checkpoint_config, load_checkpoint, network_from_checkpoint, preprocessing_of
from attrnet.inference.forward import make_normalize
from attrnet.models.build import build_model
from attrnet.paper.features import FeatureSet, shared_features
from attrnet.paper.pipeline import Outcome, fit_and_evaluate, sigmoid
from attrnet.paper.table import (
    PAPER_ATTRIBUTES,
    PAPER_GROUPS,
    PAPER_TABLE,
    ROW_TEXT,
    format_markdown,
    majority_probs,
    score_row,
    summarize,
)
from attrnet.precision import Precision
from attrnet.report.jsonable import to_jsonable

log = logging.getLogger(__name__)

ONE_GROUP = {"all": list(PAPER_ATTRIBUTES)}
# The fine-tuned rows: (model.head, the attribute groups of its penalty)
FINE_TUNED = {"S-CNN": ("independent", PAPER_GROUPS), "M-CNN": ("latent", ONE_GROUP),
              "MG-CNN": ("latent", PAPER_GROUPS)}
EXTRACT_ROWS = ("S-extract", "M-extract")
SOLVER_ROWS = {"M-CNN (solver)": ONE_GROUP, "MG-CNN (solver)": PAPER_GROUPS}
ROWS = ("majority", *EXTRACT_ROWS, "S-CNN", "M-CNN (solver)", "MG-CNN (solver)", "M-CNN", "MG-CNN")
# what the command runs unless told: M-CNN end to end is a third fine-tuning per split (--rows adds it); the
# solver's M-CNN on S-CNN's features stands for it
DEFAULT_ROWS = tuple(r for r in ROWS if r != "M-CNN")


def parse_rows(text: str | None) -> list[str]:
    """'S-CNN,MG-CNN' -> the rows in the table's order; None -> DEFAULT_ROWS; 'all' -> every row."""
    if text is None:
        return list(DEFAULT_ROWS)
    if text.strip() == "all":
        return list(ROWS)
    asked = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in asked if r not in ROWS]
    if unknown or not asked:
        raise AttrnetError(f"--rows: unknown row {unknown[0] if unknown else text!r}; valid: {', '.join(ROWS)}")
    return [r for r in ROWS if r in asked]


def check_paper_config(cfg: Config, origin: str = "config") -> None:
    """The paper's data: the Clothing Attributes format, its 23 attributes, grouped as the paper groups them."""
    if cfg.data.format != "clothing":
        raise AttrnetError(f"{origin}: paper-table reproduces the paper's Clothing table: data.format must be "
                           f"clothing, got {cfg.data.format!r}")
    names = cfg.attribute_names()
    if names is None or sorted(names) != sorted(PAPER_ATTRIBUTES):
        raise AttrnetError(f"{origin}: data.attributes must be the paper's 23 ({', '.join(PAPER_ATTRIBUTES)}); "
                           f"configs/clothing-paper.yaml lists them")
    groups = cfg.data.groups
    if not isinstance(groups, dict) or {g: sorted(m) for g, m in groups.items()} != \
            {g: sorted(m) for g, m in PAPER_GROUPS.items()}:
        raise AttrnetError(f"{origin}: data.groups must be the paper's four groups "
                           f"({', '.join(PAPER_GROUPS)}), as in configs/clothing-paper.yaml")
    if cfg.data.val_fraction <= 0 or cfg.data.test_fraction <= 0:
        raise AttrnetError(f"{origin}: paper-table needs a validation and a test part (data.val_fraction and "
                           f"data.test_fraction above 0): thresholds and the solver's penalties are chosen on the "
                           f"first, every row is scored on the second")


def split_config(cfg: Config, split: int, row: str | None = None) -> Config:
    """The config of one split (and, for a fine-tuned row, of its network: the head and its groups)."""
    data = dataclasses.replace(cfg.data, split_seed=split)
    model = cfg.model
    if row in FINE_TUNED:
        head, groups = FINE_TUNED[row]
        model = dataclasses.replace(cfg.model, head=head)
        data = dataclasses.replace(data, groups=groups)
    return dataclasses.replace(cfg, data=data, model=model)


def row_folder(out: Path, split: int, row: str) -> Path:
    return out / f"split{split}" / row


def _finished(folder: Path, epochs: int) -> bool:
    try:
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("epochs") == epochs
    except (OSError, ValueError, AttributeError):
        return False


def run_paper_table(cfg: Config, out: str | Path, splits: list[int], rows: list[str] | None = None,
                    progress: bool = True) -> dict:
    """Every asked row on every split, then OUT/table.json and OUT/table.md; returns the table.json object."""
    check_paper_config(cfg)
    out, rows = Path(out), list(rows or DEFAULT_ROWS)
    device = resolve_device(cfg.train.device)
    for split in splits:  # every run folder checked before anything trains
        for row in FINE_TUNED:
            folder = row_folder(out, split, row)
            if row in rows or (row == "S-CNN" and any(r in SOLVER_ROWS for r in rows)):
                check_run_folder(folder, split_config(cfg, split, row),
                                 resume=folder.is_dir() and any(folder.iterdir()))
    per_split, seconds = [], {}
    for split in splits:
        t0 = time.perf_counter()
        per_split.append(_split_result(cfg, out, split, rows, device, progress))
        seconds[split] = round(time.perf_counter() - t0, 1)
        log.info("split %d done in %.0f s", split, seconds[split])
    summary = summarize([s["rows"] for s in per_split])
    result = {"splits": splits, "rows": {r: ROW_TEXT[r] for r in rows},
              "per_split": per_split, "summary": summary, "paper": PAPER_TABLE, "seconds": seconds,
              "config": cfg.to_dict(), "groups": PAPER_GROUPS}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "table.json", to_jsonable(result))
    atomic.write_text(out / "table.md", table_markdown(summary, splits))
    return result


def table_markdown(summary: dict, splits: list[int]) -> str:
    """The two tables a reader compares with the paper's: balanced accuracy at the thresholds each row ships
    (tuned on validation), and plain accuracy at 0.5."""
    n = f"{len(splits)} split{'s' if len(splits) != 1 else ''} (seeds {', '.join(map(str, splits))}), mean ± sd"
    return "\n".join([
        f"## Balanced accuracy (%) at each row's thresholds, {n}", "",
        format_markdown(summary, "balanced_accuracy"), "",
        f"## Accuracy (%) at threshold 0.5, {n}", "",
        format_markdown(summary, "accuracy_at_0.5"), "",
        f"## Accuracy (%) at each row's thresholds, {n}", "",
        format_markdown(summary, "accuracy"), ""])


def _split_result(cfg: Config, out: Path, split: int, rows: list[str], device: torch.device, progress: bool) -> dict:
    """run_split's result, kept in OUT/split<k>/result.json: a finished split with the same config and at least
    the asked rows is read back (a table over more splits, or a rerun after a stop, redoes nothing)."""
    path = out / f"split{split}" / "result.json"
    key = json.loads(json.dumps(to_jsonable(split_config(cfg, split).to_dict())))  # as read back from the file
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("config") == key and set(rows) <= set(saved["result"]["rows"]):
            log.info("split %d: read back from %s", split, path)
            result = saved["result"]
            result["rows"] = {r: result["rows"][r] for r in ROWS if r in rows}
            return result
    result = run_split(cfg, out, split, rows, device, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, to_jsonable({"config": key, "result": result}))
    return json.loads(json.dumps(to_jsonable(result)))


def run_split(cfg: Config, out: Path, split: int, rows: list[str], device: torch.device, progress: bool) -> dict:
    """The rows of one split: {"split", "rows": {row: score_row(...)}, "seconds": {row: s}, "hyper": {...}}."""
    scfg = split_config(cfg, split)
    data = prepare_data(scfg, progress=progress)
    names = list(data.table.names)
    test, train = data.indices("test"), data.indices("train")
    labels = data.table.labels[test]
    scores: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    hyper: dict[str, dict] = {}

    def timed(row: str, t0: float) -> None:
        seconds[row] = round(time.perf_counter() - t0, 1)

    if "majority" in rows:
        scores["majority"] = score_row(majority_probs(data.table.labels[train], len(test)), labels, names, 0.5)
    if any(r in EXTRACT_ROWS for r in rows):
        t0 = time.perf_counter()
        feats = imagenet_features(scfg, data, out / "imagenet-features.pt", device, progress)
        outcome = fit_and_evaluate(_solver_config(scfg), data, feats, device, PAPER_GROUPS)
        scores["S-extract"] = _scored(outcome, "independent", labels, names)
        scores["M-extract"] = _scored(outcome, "mtl", labels, names)
        hyper["extract"] = outcome.hyper
        timed("extract", t0)
    for row in FINE_TUNED:
        needed = row in rows or (row == "S-CNN" and any(r in SOLVER_ROWS for r in rows))
        if not needed:
            continue
        t0 = time.perf_counter()
        folder = row_folder(out, split, row)
        rcfg = split_config(cfg, split, row)
        if not _finished(folder, rcfg.train.epochs):
            fit(rcfg, folder, resume=folder.is_dir() and any(folder.iterdir()), progress=progress,
                data=dataclasses.replace(data, groups=rcfg.data.groups))
        probs, thresholds = test_probabilities(folder, data, device)
        if row in rows:
            scores[row] = score_row(probs, labels, names, thresholds)
        timed(row, t0)
    if any(r in SOLVER_ROWS for r in rows):
        t0 = time.perf_counter()
        ckpt = load_checkpoint(row_folder(out, split, "S-CNN"))
        net = network_from_checkpoint(ckpt)
        F, logits = shared_features(scfg, net, data, device, progress, tta=scfg.model.tta)
        feats = FeatureSet("shared", F, ckpt["path"], logits)
        for row, groups in SOLVER_ROWS.items():
            if row in rows:
                outcome = fit_and_evaluate(_solver_config(scfg), data, feats, device, groups)
                scores[row] = _scored(outcome, "mtl", labels, names)
                hyper[row] = outcome.hyper
        timed("solver", t0)
    return {"split": split, "rows": {r: scores[r] for r in ROWS if r in scores}, "seconds": seconds,
            "hyper": hyper, "n": {"train": len(train), "val": len(data.indices("val")), "test": len(test)}}


def _solver_config(cfg: Config) -> Config:
    """The solver rows choose their thresholds on validation as the fine-tuned rows do (mtl.thresholds: tuned)."""
    return dataclasses.replace(cfg, mtl=dataclasses.replace(cfg.mtl, thresholds="tuned"))


def _scored(outcome: Outcome, method: str, labels: np.ndarray, names: list[str]) -> dict:
    scores, thresholds = outcome.scores[method]
    return score_row(sigmoid(scores), labels, names, thresholds)


@torch.no_grad()
def test_probabilities(run: Path, data: PreparedData, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """A finished run's test probabilities (its model file: the weights it predicts with, its test-time
    augmentation and normalisation) and the thresholds it ships."""
    ckpt = load_checkpoint(run)
    cfg = checkpoint_config(ckpt)
    net = network_from_checkpoint(ckpt).to(device)
    precision = Precision.from_config(cfg, device)
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    pre = preprocessing_of(ckpt)
    normalize = make_normalize(pre.normalization, pre.channels).to(device)
    images = images_for_device(data.decoded, device, cfg.data.cache_on_device)
    loader = make_loader(images, data, data.indices("test"), cfg.train.batch_size * 2, device, False)
    probs, _ = predict_probs(net, loader, precision, tta=cfg.model.tta, normalize=normalize)
    names = list(ckpt["attributes"])
    return probs, np.asarray(ckpt.get("thresholds") or [0.5] * len(names), dtype=float)


def imagenet_features(cfg: Config, data: PreparedData, cache: Path, device: torch.device,
                      progress: bool = True) -> FeatureSet:
    """The backbone's own ImageNet features of every image (frozen: the network is never trained here), with
    the config's test-time augmentation; computed once and kept in `cache` (they depend on the images, the
    backbone, its weights, the input size and the augmentation, not on the split)."""
    key = json.dumps({"backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained, "tta": cfg.model.tta,
                      "size": list(cfg.image_hw()), "grayscale": cfg.data.grayscale, "resize": cfg.data.resize,
                      "files": len(data.table), "source": data.table.source}, sort_keys=True)
    if cache.is_file():
        saved = model_file.load_file(cache, "feature cache")
        if isinstance(saved, dict) and saved.get("key") == key:
            return FeatureSet("shared", saved["features"].numpy(), "", None, cached=True)
    torch.manual_seed(cfg.train.seed)
    net = build_model(cfg.model, len(data.table.names), 1 if cfg.data.grayscale else 3)
    feats, _ = shared_features(cfg, net, data, device, progress, tta=cfg.model.tta)
    cache.parent.mkdir(parents=True, exist_ok=True)
    model_file.save_file(cache, {"key": key, "features": torch.from_numpy(feats)})
    return FeatureSet("shared", feats, "", None)
