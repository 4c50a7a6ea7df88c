"""Model cards: a trained model described in the Hugging Face model-card format (README.md with YAML front matter).

    text = model_card(read_info("runs/celeba40"), evaluation=None)    # evaluation: evaluate_checkpoint(..., by=[...])
                                                                      # (attrnet.engine.evaluate), or read_evaluation
    write_card(text, "runs/celeba40/MODEL_CARD.md")

What it predicts, from what data and split, the test figures per attribute beside the majority baseline, the
attribute groups, subgroup figures when an evaluation with `by` is given, intended and out-of-scope uses and the
limitations (label noise where the data is CelebA). Everything comes from the model's own description (config,
thresholds, metrics.json); nothing is invented, and a figure that is missing is written as "n/a".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from attrnet import __version__, atomic
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import load_checkpoint
from attrnet.inference.sources import HUB_CONFIG, ModelInfo, info_from_checkpoint

CARD_FILE = "MODEL_CARD.md"
GAPS_SHOWN = 5
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
# format -> (dataset name, the `datasets:` id, license of the images, where it is described)
DATASETS = {
    "celeba": ("CelebA", "celeba", "CelebA's terms: non-commercial research only", CELEBA_URL),
    "clothing": ("Clothing Attributes (Chen, Gallagher, Girod, ECCV 2012)", "clothing-attributes",
                 "the Clothing Attributes Dataset's terms (research; cite the ECCV 2012 paper)", None),
    "awa2": ("Animals with Attributes 2", "awa2", "Animals with Attributes 2's terms (images under their "
             "photographers' licences)", "https://cvml.ista.ac.at/AwA2/"),
}
CELEBA_NOISE = ("CelebA's labels are noisy: when two annotators independently assigned the values, only 12 of its 40 "
                "attributes reached 95% agreement, and three (High_Cheekbones, Pointy_Nose, Oval_Face) agreed no "
                "better than chance; a manual audit estimated error rates up to 40% for some values (Wu et al., "
                "\"Consistency and Accuracy of CelebA Attribute Values\", CVPR Workshops 2023, arXiv:2210.07356). "
                "Accuracy against these labels has a ceiling well below 100% for many attributes, small gains are "
                "within that noise, and subjective attributes (Attractive, Young, Big_Nose, ...) measure agreement "
                "with one annotator's judgement rather than a property of the face.")


def read_info(source: str | Path) -> ModelInfo:
    """The description of a model without its weights: a run folder, a checkpoint, an exported folder, a .onnx."""
    path = Path(source)
    if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()
                                  and not (path / HUB_CONFIG).is_file()):
        onnx = path if path.suffix == ".onnx" else path / "model.onnx"
        return ModelInfo.from_json(_read_json(onnx.with_suffix(".json")), str(onnx))
    if path.is_dir() and (path / HUB_CONFIG).is_file():
        return ModelInfo.from_json(_read_json(path / HUB_CONFIG), str(path))
    return info_from_checkpoint(load_checkpoint(path))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttrnetError(f"{path}: not readable JSON ({exc})") from None


def read_evaluation(path: str | Path) -> dict:
    """The JSON `attrnet evaluate --by ... --out FILE` wrote (its subgroups go into a card)."""
    evaluation = _read_json(Path(path))
    if not isinstance(evaluation, dict) or "attributes" not in evaluation:
        raise AttrnetError(f"{path}: not the JSON of `attrnet evaluate --out` (no attributes)")
    return evaluation


def write_run_card(checkpoint: Mapping, run_dir: str | Path) -> Path:
    """MODEL_CARD.md in a run folder, from its (just saved) best checkpoint and metrics.json: what the end of
    training calls."""
    return write_card(model_card(info_from_checkpoint(dict(checkpoint))), Path(run_dir) / CARD_FILE)


def write_card(text: str, path: str | Path) -> Path:
    """Write the card atomically (a reader never sees half of it)."""
    atomic.write_text(path, text)
    return Path(path)


def model_card(info: ModelInfo, evaluation: Mapping | None = None, license: str | None = None,
               name: str | None = None) -> str:
    """The card's Markdown. evaluation: evaluate_checkpoint's result (its "subgroups", when computed with `by`,
    go into the card); license: the front matter's licence (default: "other" for data sets with their own
    terms, else "unknown"); name: the model's name in the model index (default: from the run)."""
    cfg = info.config or {}
    data, model_cfg, train = cfg.get("data") or {}, cfg.get("model") or {}, cfg.get("train") or {}
    fmt = str(data.get("format", "csv"))
    metrics = info.metrics or {}
    name = name or _model_name(info, fmt)
    parts = [_front_matter(info, metrics, fmt, name, license), f"# {name}", "", _summary(info, fmt, model_cfg), "",
             *_data_section(info, data, fmt, metrics), *_training_section(model_cfg, train, metrics),
             *_results_section(info, metrics), *_groups_section(info, metrics),
             *_subgroup_section(evaluation), *_uses_section(fmt), *_limitations_section(info, metrics, fmt, train),
             *_usage_section(), f"*Written by `attrnet card` (attrnet {__version__}) from the model's config, "
             f"thresholds and test metrics.*", ""]
    return "\n".join(parts)


def _model_name(info: ModelInfo, fmt: str) -> str:
    backbone = (info.config.get("model") or {}).get("backbone", "cnn")
    return f"attrnet {backbone}: {len(info.attributes)} attributes of {_dataset_name(info, fmt).split(' (')[0]}"


def _dataset_name(info: ModelInfo, fmt: str) -> str:
    """The data set's name for a known format, else the name of the folder the run read."""
    if fmt in DATASETS:
        return DATASETS[fmt][0]
    return Path(str((info.config.get("data") or {}).get("root", fmt))).name or fmt


def _num(x: Any) -> float:
    try:
        return float("nan") if x is None else float(x)
    except (TypeError, ValueError):
        return float("nan")


def _f(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _front_matter(info: ModelInfo, metrics: Mapping, fmt: str, name: str, license: str | None) -> str:
    dataset = DATASETS.get(fmt)
    meta: dict[str, Any] = {"library_name": "attrnet"}
    if license:
        meta["license"] = license
    elif dataset:
        meta.update(license="other", license_name=f"{dataset[1]}-terms", license_link=dataset[3] or "")
        if not meta["license_link"]:
            del meta["license_link"]
    else:
        meta["license"] = "unknown"
    backbone = (info.config.get("model") or {}).get("backbone", "cnn")
    meta["tags"] = ["attrnet", "image-classification", "multi-label-classification", "pytorch",
                    str(backbone).replace("/", "-"), *([dataset[1]] if dataset else [])]
    meta["datasets"] = [dataset[1] if dataset else Path(str((info.config.get("data") or {}).get("root", fmt))).name]
    meta["pipeline_tag"] = "image-classification"
    meta["metrics"] = ["accuracy", "f1"]
    figures = [("accuracy", "mean_accuracy", f"Mean accuracy over {len(info.attributes)} attributes"),
               ("accuracy", "mean_majority_accuracy", "Majority-class baseline (mean accuracy)"),
               ("balanced_accuracy", "mean_balanced_accuracy", "Mean balanced accuracy"),
               ("f1", "mean_f1", "Mean F1"), ("average_precision", "mean_average_precision", "Mean average precision")]
    values = [{"type": t, "value": round(_num(metrics.get(k)), 4), "name": label}
              for t, k, label in figures if math.isfinite(_num(metrics.get(k)))]
    if values:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Binary attribute prediction (multi-label)"},
            "dataset": {"type": meta["datasets"][0], "name": dataset[0] if dataset else meta["datasets"][0],
                        "split": str(metrics.get("split", "test"))},
            "metrics": values}]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120) + "---\n"


def _summary(info: ModelInfo, fmt: str, model_cfg: Mapping) -> str:
    h, w = info.image_size
    dataset = DATASETS[fmt][0] if fmt in DATASETS else f"the labelled images of folder `{_dataset_name(info, fmt)}`"
    return (f"A multi-task CNN ({model_cfg.get('backbone', 'cnn')}, trained with attrnet) that predicts "
            f"{len(info.attributes)} binary attributes of an image at once, trained on {dataset}. For each "
            f"attribute it gives a probability and a yes/no decision: yes when the probability is at or above the "
            f"attribute's threshold. Input: one {'grey' if info.grayscale else 'RGB'} image, resized "
            f"({info.resize}) to {h} x {w} pixels; test-time augmentation: {info.tta}.")


def _data_section(info: ModelInfo, data: Mapping, fmt: str, metrics: Mapping) -> list[str]:
    dataset = DATASETS.get(fmt)
    folder = Path(str(data.get("root", ""))).name or "?"
    lines = ["## Training data and split", "",
             f"- Data: {dataset[0] if dataset else 'a folder of labelled images'}, read as format `{fmt}` from a "
             f"folder named `{folder}`" + (f" ({dataset[2]}; {dataset[3]})" if dataset and dataset[3] else
                                         f" ({dataset[2]})" if dataset else "") + ".",
             f"- Split: {_split_text(data, fmt)}.",
             f"- Thresholds were tuned per attribute on the validation split; the figures below are on the "
             f"{metrics.get('split', 'test')} split ({metrics.get('n_images', 'n/a')} images), which neither "
             f"training nor threshold tuning saw.", ""]
    return lines


def _split_text(data: Mapping, fmt: str) -> str:
    """How train, validation and test were drawn; for CelebA, whether its partition file was there (when the
    folder can still be seen)."""
    random = (f"a random split seeded with {data.get('split_seed', 0)}: "
              f"{_pct(1 - _num(data.get('val_fraction', 0.1)) - _num(data.get('test_fraction', 0.2)))} train, "
              f"{_pct(data.get('val_fraction', 0.1))} validation, {_pct(data.get('test_fraction', 0.2))} test")
    root = Path(str(data.get("root", "")))
    if fmt == "celeba" and root.is_dir():
        if (root / "list_eval_partition.txt").is_file():
            return "CelebA's official partition (`list_eval_partition.txt`)"
        return f"{random} (the folder has no `list_eval_partition.txt`)"
    return f"the data's official partition when it has one (CelebA's `list_eval_partition.txt`); otherwise {random}"


def _pct(x: Any) -> str:
    v = _num(x)
    return f"{100 * v:.0f}%" if math.isfinite(v) else "n/a"


def _training_section(model_cfg: Mapping, train: Mapping, metrics: Mapping) -> list[str]:
    pretrained = model_cfg.get("pretrained")
    init = "ImageNet-pretrained weights" if pretrained not in (False, None, "false") else "random initialisation"
    return ["## Training", "",
            f"- Network: {model_cfg.get('backbone', '?')} from {init}, one output per attribute "
            f"(head: {model_cfg.get('head', 'independent')}).",
            f"- {metrics.get('epochs', train.get('epochs', '?'))} epoch(s), batch size {train.get('batch_size', '?')}, "
            f"learning rate {train.get('lr', '?')} ({train.get('schedule', '?')} schedule), weight decay "
            f"{train.get('weight_decay', '?')}, loss weighting `{train.get('weighting', 'ew')}`; unknown labels are "
            f"left out of the loss.", ""]


def _results_section(info: ModelInfo, metrics: Mapping) -> list[str]:
    if not metrics.get("attributes"):
        return ["## Results", "", "No test metrics were recorded with this model (no metrics.json).", ""]
    acc, base = _num(metrics.get("mean_accuracy")), _num(metrics.get("mean_majority_accuracy"))
    per = metrics["attributes"]
    beaten = [n for n, a in per.items() if math.isfinite(_num(a.get("accuracy")) - _num(a.get("majority_accuracy")))
              and round(_num(a.get("accuracy")) - _num(a.get("majority_accuracy")), 3) > 0]
    known = [n for n, a in per.items() if math.isfinite(_num(a.get("accuracy")) - _num(a.get("majority_accuracy")))]
    lines = ["## Results", "",
             f"On the {metrics.get('split', 'test')} split: mean accuracy **{_f(acc)}** against **{_f(base)}** for "
             f"the majority-class baseline (always answering each attribute's more common value; gain "
             f"{f'{acc - base:+.3f}' if math.isfinite(acc - base) else 'n/a'}). Mean balanced accuracy "
             f"{_f(metrics.get('mean_balanced_accuracy'))}, mean F1 {_f(metrics.get('mean_f1'))}, mean average "
             f"precision {_f(metrics.get('mean_average_precision'))}. {len(beaten)} of {len(known)} attributes beat "
             f"their majority baseline.", "",
             "| attribute | accuracy | balanced accuracy | F1 | AP | threshold | positive rate | majority baseline |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in info.attributes:
        a = per.get(name, {})
        lines.append(f"| {name} | {_f(a.get('accuracy'))} | {_f(a.get('balanced_accuracy'))} | {_f(a.get('f1'))} | "
                     f"{_f(a.get('average_precision'))} | {_f(a.get('threshold'))} | {_f(a.get('positive_rate'))} | "
                     f"{_f(a.get('majority_accuracy'))} |")
    return lines + ["", "Balanced accuracy and AP are the figures to read for rare attributes: where a class is "
                        "rare, accuracy is high whatever the model does.", ""]


def _groups_section(info: ModelInfo, metrics: Mapping) -> list[str]:
    if not info.groups:
        return []
    figures = metrics.get("groups") or {}
    lines = ["## Attribute groups", "", "| group | attributes | mean accuracy | mean balanced accuracy |",
             "|---|---|---:|---:|"]
    for group, names in info.groups.items():
        g = figures.get(group, {})
        lines.append(f"| {group} | {', '.join(names)} | {_f(g.get('mean_accuracy'))} | "
                     f"{_f(g.get('mean_balanced_accuracy'))} |")
    return lines + [""]


def _subgroup_section(evaluation: Mapping | None) -> list[str]:
    subgroups = (evaluation or {}).get("subgroups")
    if not subgroups:
        return []
    where = (f"the {evaluation.get('split', 'test')} split of `{Path(str(evaluation.get('data', ''))).name}`"
             if evaluation.get("data") else f"the {evaluation.get('split', 'test')} split")
    lines = ["## Subgroups", "",
             f"Every metric computed separately for the images whose true label of an attribute is 1 and is 0 "
             f"(images with that label unknown are in neither), on {where}, at the model's thresholds.", "",
             "| subgroup | images | mean accuracy | majority baseline | mean balanced accuracy | mean F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for by, entry in subgroups.items():
        for value in ("1", "0"):
            m = entry[value]
            lines.append(f"| {by} = {value} | {m.get('n_images', 'n/a')} | {_f(m.get('mean_accuracy'))} | "
                         f"{_f(m.get('mean_majority_accuracy'))} | {_f(m.get('mean_balanced_accuracy'))} | "
                         f"{_f(m.get('mean_f1'))} |")
    for by, entry in subgroups.items():
        gaps = sorted(((n, _num(g)) for n, g in entry["accuracy_gap"].items() if n != by and math.isfinite(_num(g))),
                      key=lambda item: -abs(item[1]))[:GAPS_SHOWN]
        if not gaps:
            continue
        lines += ["", f"Largest accuracy gaps between {by} = 1 and {by} = 0 ({by} itself left out):", "",
                  f"| attribute | accuracy, {by} = 1 | accuracy, {by} = 0 | gap | majority, {by} = 1 | "
                  f"majority, {by} = 0 |", "|---|---:|---:|---:|---:|---:|"]
        for n, g in gaps:
            a1, a0 = entry["1"]["attributes"][n], entry["0"]["attributes"][n]
            lines.append(f"| {n} | {_f(a1.get('accuracy'))} | {_f(a0.get('accuracy'))} | {g:+.3f} | "
                         f"{_f(a1.get('majority_accuracy'))} | {_f(a0.get('majority_accuracy'))} |")
    return lines + ["", "A gap beside an equal gap in the majority baseline says more about how common the attribute "
                        "is in each subgroup than about the model.", ""]


def _uses_section(fmt: str) -> list[str]:
    faces = fmt == "celeba"
    intended = ["Research on multi-task prediction of visual attributes: comparing architectures, loss weightings "
                "and training recipes on the same split.", "Teaching and demonstrations (`attrnet serve` gives a "
                "web page to try the model on one's own images)."]
    out_of_scope = ["Any decision about a person or with consequences for one (hiring, admission, credit, "
                    "insurance, policing, moderation of a person's account).",
                    "Deployment on images unlike the training data without measuring it there first."]
    if faces:
        intended.append("Studying label noise and subgroup differences in face-attribute data (see Subgroups and "
                        "Limitations).")
        out_of_scope[:0] = ["Identifying or tracking people, surveillance, or matching faces: it was not trained "
                            "for identity and must not be used for it.",
                            "Inferring sensitive or protected characteristics of real people (sex, age, ethnicity, "
                            "attractiveness, health): CelebA's labels for such attributes are one annotator's "
                            "impression of a celebrity photo, not facts about a person."]
        out_of_scope.append("Commercial use: CelebA's images and labels are for non-commercial research only.")
    return (["## Intended uses", ""] + [f"- {x}" for x in intended] + ["", "## Out-of-scope uses", ""]
            + [f"- {x}" for x in out_of_scope] + [""])


def _limitations_section(info: ModelInfo, metrics: Mapping, fmt: str, train: Mapping) -> list[str]:
    h, w = info.image_size
    items = []
    if fmt == "celeba":
        items.append(CELEBA_NOISE)
        items.append("CelebA shows celebrities, aligned and cropped, mostly young, mostly light-skinned and "
                     "photographed professionally; the model has not been measured on other faces. Accuracy can "
                     "differ between groups of people: see Subgroups where this card has them, or make them with "
                     "`attrnet card MODEL --by Male,Young`.")
    else:
        items.append("The labels come from annotators and carry their noise and judgement; accuracy is measured "
                     "against them, not against the truth.")
    epochs = metrics.get("epochs", train.get("epochs"))
    if isinstance(epochs, (int, float)) and epochs < 5:
        items.append(f"A short run ({epochs} epoch(s) at {h} x {w} px): its figures show the pipeline working, "
                     f"not what the recipe reaches with full training.")
    items.append(f"Images are read at {h} x {w} pixels ({info.resize}); detail smaller than that is lost, and images "
                 f"framed differently from the training data (not {'aligned faces' if fmt == 'celeba' else 'like it'}) "
                 f"get unreliable probabilities.")
    items.append("Thresholds were tuned for accuracy on the validation split; for another goal (recall of a rare "
                 "attribute, say) tune them again.")
    if not metrics.get("attributes"):
        items.append("No test figures came with this model: measure it with `attrnet evaluate` before use.")
    return ["## Limitations", ""] + [f"- {x}" for x in items] + [""]


def _usage_section() -> list[str]:
    return ["## How to use", "", "```python", "from attrnet.inference import load_model", "",
            "model = load_model(\"THIS_FOLDER\")          # a run folder, an exported folder or a Hub repo id",
            "result = model.predict([\"photo.jpg\"])", "result.probabilities, result.decisions, result.attributes",
            "```", "", "```bash", "attrnet predict THIS_FOLDER photo.jpg", "attrnet serve THIS_FOLDER   "
            "# REST API and a web page on http://127.0.0.1:8000/", "```", ""]
