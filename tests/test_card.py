"""Subgroup metrics (metrics.subgroup_metrics, evaluate --by) and model cards (attrnet card, the card written at
the end of training and into an exported folder): numbers checked against hand computations and metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from attrnet import metrics
from attrnet.card import CELEBA_NOISE, model_card
from attrnet.inference.sources import read_info

NAN = float("nan")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ---------------------------------------------------------------- subgroup metrics


def test_subgroup_metrics_by_hand():
    # 6 images, attributes X and Y; subgroup attribute G: 1, 1, 1, 0, 0, unknown
    probs = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.6, 0.1], [0.2, 0.9], [0.9, 0.9]])
    labels = np.array([[1, 0], [1, 1], [1, 1], [0, 0], [0, NAN], [1, 1]], dtype=float)
    g = np.array([[1], [1], [1], [0], [0], [NAN]])
    out = metrics.subgroup_metrics(probs, labels, ["X", "Y"], [0.5, 0.5], g, ["G"])
    one, zero = out["G"]["1"], out["G"]["0"]
    assert one["n_images"] == 3 and zero["n_images"] == 2  # the unknown-G image is in neither
    # G=1: X predicted 1,1,0 for labels 1,1,1 -> 2/3; Y predicted 0,1,1 for 0,1,1 -> 3/3
    assert one["attributes"]["X"]["accuracy"] == pytest.approx(2 / 3)
    assert one["attributes"]["Y"]["accuracy"] == pytest.approx(1.0)
    assert one["mean_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    # G=0: X predicted 1,0 for labels 0,0 -> 1/2; Y: one known label (0), predicted 0 -> 1
    assert zero["attributes"]["X"]["accuracy"] == pytest.approx(0.5)
    assert zero["attributes"]["Y"]["n_known"] == 1 and zero["attributes"]["Y"]["accuracy"] == 1.0
    assert zero["attributes"]["X"]["majority_accuracy"] == 1.0  # all X labels are 0 in G=0
    assert out["G"]["accuracy_gap"]["X"] == pytest.approx(2 / 3 - 0.5)
    # every metric, not just accuracy: the same as attribute_metrics on the subgroup's rows
    same = metrics.attribute_metrics(probs[:3], labels[:3], ["X", "Y"], [0.5, 0.5])
    assert one["attributes"]["Y"]["f1"] == same["attributes"]["Y"]["f1"] == pytest.approx(1.0)
    assert one["mean_balanced_accuracy"] == same["mean_balanced_accuracy"]


def test_subgroup_metrics_checks_shapes():
    with pytest.raises(ValueError, match="by_labels shape"):
        metrics.subgroup_metrics(np.zeros((3, 1)), np.zeros((3, 1)), ["X"], 0.5, np.zeros((2, 1)), ["G"])


def test_evaluate_by_gives_subgroups_in_json_and_table(run_cli, csv_run, tmp_path):
    out = tmp_path / "eval.json"
    code, printed, err = run_cli(["evaluate", csv_run["run"], "--by", "C,A", "--out", out, "--device", "cpu"])
    assert code == 0, err
    result = json.loads(out.read_text())
    sub = result["subgroups"]
    assert set(sub) == {"C", "A"}
    for by in ("C", "A"):
        assert sub[by]["1"]["n_images"] + sub[by]["0"]["n_images"] == result["n_images"]  # no unknown labels
        assert sub[by]["1"]["n_images"] > 0 and sub[by]["0"]["n_images"] > 0
    # split by A itself: A's own row would be trivial (every label 1, every label 0), so it is left out of A's
    # subgroups, their means (here B's figures alone) and the gaps; the table does the same
    for value in ("1", "0"):
        assert list(sub["A"][value]["attributes"]) == ["B"]
        assert sub["A"][value]["mean_accuracy"] == sub["A"][value]["attributes"]["B"]["accuracy"]
    assert list(sub["A"]["accuracy_gap"]) == ["B"] and set(sub["C"]["accuracy_gap"]) == {"A", "B"}
    gap = sub["C"]["1"]["attributes"]["B"]["accuracy"] - sub["C"]["0"]["attributes"]["B"]["accuracy"]
    assert sub["C"]["accuracy_gap"]["B"] == pytest.approx(gap)
    # the C=1 subgroup's size is the number of test images whose C label is 1 (the data's own labels)
    assert "subgroups by the true label of C" in printed and "acc|1" in printed
    line = next(ln for ln in printed.splitlines() if ln.startswith("subgroups by the true label of C"))
    assert f"C=1 ({sub['C']['1']['n_images']} images" in line


def test_evaluate_by_an_unknown_attribute_says_which_exist(run_cli, csv_run):
    code, _, err = run_cli(["evaluate", csv_run["run"], "--by", "Nope", "--device", "cpu"])
    assert code == 2 and "--by Nope" in err and "A, B, C" in err


# ---------------------------------------------------------------- model cards


def test_training_writes_a_card_into_the_run_folder(csv_run):
    card = (Path(csv_run["run"]) / "MODEL_CARD.md").read_text()
    saved = json.loads((Path(csv_run["run"]) / "metrics.json").read_text())
    meta = _front_matter(card)
    assert meta["library_name"] == "attrnet"
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["Mean accuracy over 2 attributes"] == pytest.approx(round(saved["mean_accuracy"], 4))
    assert values["Majority-class baseline (mean accuracy)"] == pytest.approx(round(saved["mean_majority_accuracy"], 4))


def test_card_cli_front_matter_table_and_sections(run_cli, csv_run, tmp_path):
    out = tmp_path / "MODEL_CARD.md"
    code, printed, err = run_cli(["card", csv_run["run"], "--out", out])
    assert code == 0, err
    assert f"wrote {out}" in printed
    text = out.read_text()
    meta = _front_matter(text)
    for key in ("library_name", "license", "tags", "datasets", "model-index"):
        assert key in meta, key
    assert meta["license"] == "unknown" and "multi-label-classification" in meta["tags"]
    assert meta["datasets"] == ["data"]  # the csv folder's name
    saved = json.loads((Path(csv_run["run"]) / "metrics.json").read_text())
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    for name in ("A", "B"):
        a = saved["attributes"][name]
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        expected = [a["accuracy"], a["balanced_accuracy"], a["f1"], a["average_precision"], a["threshold"],
                    a["positive_rate"], a["majority_accuracy"]]
        assert cells[1:] == [f"{v:.3f}" if v is not None and math.isfinite(v) else "n/a" for v in expected]
    for section in ("## Training data and split", "## Results", "## Intended uses", "## Out-of-scope uses",
                    "## Limitations", "## How to use"):
        assert section in text, section
    assert "Wu et al." not in text  # not CelebA
    assert "## Subgroups" not in text


def test_card_with_subgroups_from_by_or_from_an_evaluation_file(run_cli, csv_run, tmp_path):
    evaluation = tmp_path / "eval.json"
    assert run_cli(["evaluate", csv_run["run"], "--by", "C", "--out", evaluation, "--device", "cpu"])[0] == 0
    code, by_text, err = run_cli(["card", csv_run["run"], "--by", "C", "--device", "cpu"])
    assert code == 0, err
    code, file_text, err = run_cli(["card", csv_run["run"], "--evaluation", evaluation])
    assert code == 0, err
    assert by_text == file_text
    sub = json.loads(evaluation.read_text())["subgroups"]["C"]
    assert "## Subgroups" in by_text
    row = next(ln for ln in by_text.splitlines() if ln.startswith("| C = 1 |"))
    assert f"| {sub['1']['n_images']} | {sub['1']['mean_accuracy']:.3f} |" in row
    gaps = by_text.split("Largest accuracy gaps between C = 1 and C = 0")[1]
    largest = max(("A", "B"), key=lambda n: abs(sub["accuracy_gap"][n]))
    first_row = next(ln for ln in gaps.splitlines() if ln.startswith("| ") and not ln.startswith("| attribute"))
    assert first_row.startswith(f"| {largest} |") and f"{sub['accuracy_gap'][largest]:+.3f}" in first_row
    code, _, err = run_cli(["card", csv_run["run"], "--by", "C", "--evaluation", evaluation])
    assert code == 2 and "use one" in err


def test_celeba_card_names_the_label_noise_and_out_of_scope_uses(csv_run):
    info = read_info(csv_run["run"])
    info.config = {**info.config, "data": {**info.config["data"], "format": "celeba", "root": "/x/celeba-8k"}}
    info.trained_on = {"dataset": "celeba"}  # what a run on a CelebA folder records
    text = model_card(info)
    assert CELEBA_NOISE in text and "only 12 of its 40 attributes reached 95% agreement" in text
    assert "Wu et al." in text and "CVPR Workshops 2023" in text and "arXiv:2210.07356" in text
    assert "Identifying or tracking people" in text and "non-commercial" in text
    meta = _front_matter(text)
    assert meta["license"] == "other" and meta["datasets"] == ["celeba"] and "celeba" in meta["tags"]


def test_exported_folder_carries_the_card_and_can_be_carded(run_cli, csv_run, tmp_path):
    hub = tmp_path / "hub"
    code, _, err = run_cli(["export", csv_run["run"], "--format", "hub", "--out", hub])
    assert code == 0, err
    readme = (hub / "README.md").read_text()
    assert "model-index" in _front_matter(readme) and "## Limitations" in readme
    code, printed, err = run_cli(["card", hub])
    assert code == 0, err
    table = lambda t: [ln for ln in t.splitlines() if ln.startswith(("| A |", "| B |"))]  # noqa: E731
    assert table(printed) == table(readme) and len(table(readme)) == 2


def test_card_without_metrics_says_so(csv_run):
    info = read_info(csv_run["run"])
    info.metrics = None
    text = model_card(info)
    assert "No test metrics were recorded" in text and "model-index" not in _front_matter(text)
