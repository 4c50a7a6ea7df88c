"""The `attrnet` command: one-line errors with exit code 2, --help everywhere, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_csv_rows, write_csv_folder

from attrnet.cli import main
from attrnet.inference.checkpoint import load_checkpoint

SEED8 = ["Eyeglasses", "Male", "Smiling", "Wearing_Hat", "Wearing_Necklace", "Wearing_Necktie",
         "Wearing_Earrings", "Wearing_Lipstick"]


def _one_error_line(code: int, err: str) -> str:
    """Exit code 2 and exactly one line on stderr, `attrnet: error: ...`, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("attrnet: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(tmp_path / "run"), "train.device=cpu", f"data.cache_dir={tmp_path / 'cache'}",
            "data.image_size=16", "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=1", *extra]


# --- bad input: exit code 2 and one line ---------------------------------------------------------------------

def test_missing_data_folder(run_cli, tmp_path):
    code, _, err = run_cli(_train_args(tmp_path, f"data.root={tmp_path / 'nope'}"))
    line = _one_error_line(code, err)
    assert "data folder not found" in line and str(tmp_path / "nope") in line


def test_missing_label_file(run_cli, tmp_path):
    (tmp_path / "data").mkdir()
    code, _, err = run_cli(_train_args(tmp_path, f"data.root={tmp_path / 'data'}", "data.format=csv",
                                       "data.labels=attrs.csv"))
    line = _one_error_line(code, err)
    assert "label file not found" in line and "attrs.csv" in line
    code, _, err = run_cli(_train_args(tmp_path, f"data.root={tmp_path / 'data'}"))  # celeba layout
    assert "list_attr_celeba.txt" in _one_error_line(code, err)


def test_unknown_attribute_lists_valid_names(run_cli, tmp_path):
    data = write_csv_folder(tmp_path / "data", ["image", "A", "B"], random_csv_rows(4, ["A", "B"]))
    code, _, err = run_cli(_train_args(tmp_path, f"data.root={data}", "data.format=csv", "data.attributes=[A,Z]"))
    line = _one_error_line(code, err)
    assert "unknown attribute(s) Z" in line and "valid names: A, B" in line


def test_unknown_config_key_lists_valid_keys(run_cli, tmp_path):
    code, _, err = run_cli(_train_args(tmp_path, "train.epoch=3"))
    line = _one_error_line(code, err)
    assert "train.epoch" in line and "epochs" in line and "batch_size" in line
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_bad_config_value(run_cli, tmp_path):
    code, _, err = run_cli(_train_args(tmp_path, "train.epochs=abc"))
    assert "train.epochs must be a whole number" in _one_error_line(code, err)


def test_config_file_not_found(run_cli, tmp_path):
    code, _, err = run_cli(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])
    line = _one_error_line(code, err)
    assert "config file not found" in line and "nope.yaml" in line


def test_evaluate_on_a_different_attribute_set(run_cli, tmp_path, csv_run):
    other = write_csv_folder(tmp_path / "other", ["image", "C", "D"], random_csv_rows(6, ["C", "D"], prefix="o"))
    code, _, err = run_cli(["evaluate", csv_run["run"], "--data", other, "--device", "cpu"])
    line = _one_error_line(code, err)
    assert "A, B" in line and "different attribute set" in line


def test_predict_on_a_missing_path(run_cli, tmp_path, csv_run):
    code, _, err = run_cli(["predict", csv_run["run"], str(tmp_path / "nowhere.jpg"), "--device", "cpu"])
    line = _one_error_line(code, err)
    assert "no such image or folder" in line and "nowhere.jpg" in line


def test_predict_bad_output_suffix(run_cli, tmp_path, csv_run):
    code, _, err = run_cli(["predict", csv_run["run"], csv_run["data"], "--out", tmp_path / "p.txt",
                            "--device", "cpu"])
    assert "--out must end in .csv or .json" in _one_error_line(code, err)
    assert not (tmp_path / "p.txt").exists()


def test_predict_reads_bmp_and_tiff_and_says_why_a_file_is_skipped_with_csv_output(run_cli, tmp_path, csv_run):
    """BMP and TIFF files, which a folder search picks up, are decoded (the same pixels as the PNG of the same
    image); an unreadable file is reported with its reason whatever the output format."""
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = Image.open(csv_run["data"] / "img000.jpg").convert("RGB")
    for suffix in ("png", "bmp", "tif"):
        src.save(folder / f"a.{suffix}")
    (folder / "broken.tiff").write_bytes(b"II*\x00" + b"\x00" * 20)
    code, out, err = run_cli(["predict", csv_run["run"], folder, "--out", tmp_path / "p.csv", "--device", "cpu"])
    assert code == 0, err
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert sorted(Path(r.split(",")[0]).name for r in rows) == ["a.bmp", "a.png", "a.tif"]
    assert len({",".join(r.split(",")[1:]) for r in rows}) == 1  # lossless files of one image: one answer
    assert "skipped 1 unreadable image(s):" in err and "broken.tiff" in err and "cannot decode image" in err


def test_predict_skips_and_reports_unreadable_images(run_cli, tmp_path, csv_run):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("img000.jpg", "img001.jpg", "img002.jpg"):
        (folder / name).write_bytes((csv_run["data"] / name).read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("not an image either, and not named like one")
    code, out, err = run_cli(["predict", csv_run["run"], folder, "--out", tmp_path / "p.json", "--device", "cpu"])
    assert code == 0, err
    assert "wrote 3 predictions" in out
    assert "skipped 1 unreadable image(s)" in err and "broken.jpg: not an image in a format attrnet reads" in err
    pj = json.loads((tmp_path / "p.json").read_text())
    assert [Path(r["image"]).name for r in pj["images"]] == ["img000.jpg", "img001.jpg", "img002.jpg"]
    assert [Path(u["image"]).name for u in pj["unreadable"]] == ["broken.jpg"]
    assert "not an image in a format attrnet reads (JPEG, PNG, GIF, WebP, BMP or TIFF)" in pj["unreadable"][0]["reason"]
    assert pj["attributes"] == ["A", "B"]
    ckpt = load_checkpoint(csv_run["run"])
    assert pj["thresholds"] == pytest.approx(ckpt["thresholds"])
    for row in pj["images"]:
        for j, a in enumerate(["A", "B"]):
            assert row["attributes"][a] == int(row["probabilities"][a] >= ckpt["thresholds"][j])


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_text_file_is_not_a_checkpoint(run_cli, tmp_path, csv_run, command):
    fake = tmp_path / "model.pt"
    fake.write_text("I am not a checkpoint\n")
    argv = [command, fake] + ([csv_run["data"]] if command == "predict" else ["--data", csv_run["data"]])
    code, _, err = run_cli(argv + ["--device", "cpu"])
    line = _one_error_line(code, err)
    assert str(fake) in line and "not an attrnet checkpoint" in line and "attrnet reads a run folder" in line


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_missing_checkpoint_and_empty_run_folder(run_cli, tmp_path, csv_run, command):
    args = ["--data", csv_run["data"]] if command == "evaluate" else [csv_run["data"]]
    code, _, err = run_cli([command, tmp_path / "missing.pt"] + args)
    line = _one_error_line(code, err)
    assert ("checkpoint not found" if command == "evaluate" else "model not found") in line
    (tmp_path / "emptyrun").mkdir()
    code, _, err = run_cli([command, tmp_path / "emptyrun"] + args)
    assert "no checkpoints/best.pt" in _one_error_line(code, err)


def test_inspect_missing_folder(run_cli, tmp_path):
    code, _, err = run_cli(["data", "inspect", tmp_path / "nope"])
    assert "data folder not found" in _one_error_line(code, err)


@pytest.mark.parametrize("argv", [[], ["train"], ["evaluate"], ["predict"], ["data"], ["data", "synth"],
                                  ["data", "inspect"], ["demo"], ["bench"]])
def test_help_for_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: attrnet") and " ".join(["attrnet"] + argv) in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate"])  # no checkpoint given
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err


# --- end to end on tiny synthetic data -----------------------------------------------------------------------

def _read_celeba_labels(root: Path) -> tuple[list[str], np.ndarray]:
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    rows = [line.split() for line in lines[2:] if line.strip()]
    return [r[0] for r in rows], np.array([[1.0 if v == "1" else 0.0 for v in r[1:]] for r in rows])


def test_end_to_end_synth_train_evaluate_predict_inspect(run_cli, tmp_path):
    data, run, cache = tmp_path / "D", tmp_path / "R", tmp_path / "cache"

    code, out, err = run_cli(["data", "synth", "--out", data, "--n", "60", "--size", "32"])
    assert code == 0, err
    assert len(list((data / "img_align_celeba").glob("*.jpg"))) == 60
    files, labels = _read_celeba_labels(data)
    assert len(files) == 60 and labels.shape == (60, 8)

    code, out, err = run_cli(["train", f"data.root={data}", "data.image_size=32", "train.epochs=1",
                              "train.batch_size=8", "train.device=cpu", f"data.cache_dir={cache}",
                              "train.max_steps_per_epoch=2", "--out", run])
    assert code == 0, err
    assert "run folder:" in out
    for rel in ("config.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "metrics.json",
                "plots/attribute_accuracy.png", "plots/training_curves.png"):
        assert (run / rel).is_file(), rel
    for png in ("attribute_accuracy.png", "training_curves.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.rglob("*.tmp"))

    with open(run / "metrics.csv") as fh:
        history = list(csv.DictReader(fh))
    assert len(history) == 1 and history[0]["epoch"] == "1"
    assert {"epoch", "train/loss", "val/mean_accuracy"} <= set(history[0])
    assert float(history[0]["train/loss"]) > 0 and 0 <= float(history[0]["val/mean_accuracy"]) <= 1

    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["attributes"]) == set(SEED8)
    assert 0.0 <= saved["mean_accuracy"] <= 1.0
    for name, a in saved["attributes"].items():
        for key in ("accuracy", "balanced_accuracy", "f1", "average_precision", "threshold", "positive_rate"):
            assert key in a, (name, key)
    ckpt = load_checkpoint(run)
    thresholds = np.array(ckpt["thresholds"])
    assert ckpt["attributes"] == SEED8 and thresholds.shape == (8,)
    assert ckpt["preprocessing"]["image_size"] == [32, 32] and ckpt["config"]["data"]["cache_dir"] == str(cache)

    # evaluate on every image
    code, out, err = run_cli(["evaluate", run, "--data", data, "--split", "all", "--out", tmp_path / "E.json",
                              "--device", "cpu"])
    assert code == 0, err
    ev = json.loads((tmp_path / "E.json").read_text())
    for key in ("mean_accuracy", "mean_balanced_accuracy", "mean_f1", "mean_average_precision",
                "mean_majority_accuracy", "mean_accuracy_at_0.5", "n_images", "split", "checkpoint", "data",
                "skipped_unreadable", "attributes"):
        assert key in ev, key
    assert ev["n_images"] == 60 and ev["split"] == "all" and ev["skipped_unreadable"] == 0
    assert ev["data"] == str(data) and ev["checkpoint"] == str(run / "checkpoints" / "best.pt")
    assert list(ev["attributes"]) == SEED8
    for j, name in enumerate(SEED8):
        a = ev["attributes"][name]
        assert {"accuracy", "balanced_accuracy", "f1", "average_precision", "threshold", "positive_rate",
                "predicted_positive_rate", "majority_accuracy", "accuracy_at_0.5", "n_known"} <= set(a)
        assert a["n_known"] == 60
        assert a["threshold"] == pytest.approx(thresholds[j], abs=0)
        assert a["positive_rate"] == pytest.approx(labels[:, j].mean())
        assert a["majority_accuracy"] == pytest.approx(max(labels[:, j].mean(), 1 - labels[:, j].mean()))
    assert ev["mean_accuracy"] == pytest.approx(np.mean([ev["attributes"][n]["accuracy"] for n in SEED8]))

    # predict every image to CSV: one row per image, <attr>_prob and 0/1 columns
    code, out, err = run_cli(["predict", run, data / "img_align_celeba", "--out", tmp_path / "P.csv",
                              "--device", "cpu", "--batch-size", "512"])
    assert code == 0, err
    assert "wrote 60 predictions" in out
    with open(tmp_path / "P.csv") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header == ["image"] + [f"{a}_prob" for a in SEED8] + SEED8
    assert len(body) == 60
    assert [Path(r[0]).name for r in body] == files
    probs = np.array([[float(v) for v in r[1:9]] for r in body])
    decisions = np.array([[int(v) for v in r[9:]] for r in body])
    assert ((probs >= 0) & (probs <= 1)).all() and set(np.unique(decisions)) <= {0, 1}
    clear = np.abs(probs - thresholds) > 1e-4  # away from the threshold the 5-decimal probs decide alike
    np.testing.assert_array_equal(decisions[clear], (probs >= thresholds).astype(int)[clear])
    # the decisions are the ones evaluate scored: same accuracy per attribute
    for j, name in enumerate(SEED8):
        assert np.mean(decisions[:, j] == labels[:, j]) == pytest.approx(ev["attributes"][name]["accuracy"])

    # JSON output holds the same predictions
    code, out, err = run_cli(["predict", run, data / "img_align_celeba", "--out", tmp_path / "P.json",
                              "--device", "cpu"])
    assert code == 0, err
    pj = json.loads((tmp_path / "P.json").read_text())
    assert pj["attributes"] == SEED8 and pj["thresholds"] == pytest.approx(thresholds.tolist())
    assert len(pj["images"]) == 60 and pj["unreadable"] == []
    for row, p, d in zip(pj["images"], probs, decisions):
        assert [row["probabilities"][a] for a in SEED8] == pytest.approx(p.tolist(), abs=1e-5)
        assert [row["attributes"][a] for a in SEED8] == d.tolist()

    # inspect prints counts and rates
    code, out, err = run_cli(["data", "inspect", data])
    assert code == 0, err
    assert "(celeba): 60 images, 8 attributes" in out
    part = [int(line.split()[1]) for line in (data / "list_eval_partition.txt").read_text().splitlines()]
    assert f"partition: {{'train': {part.count(0)}, 'val': {part.count(1)}, 'test': {part.count(2)}}}" in out
    for j, name in enumerate(SEED8):
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert line.split()[1:] == [f"{labels[:, j].mean():.3f}", "0.000"]
    assert "image sizes: 32x32 (60)" in out and "unreadable files: 0" in out


def test_evaluate_and_predict_with_flip_tta(run_cli, tmp_path, csv_run):
    code, out, _ = run_cli(["evaluate", csv_run["run"], "--split", "all", "--device", "cpu",
                            "--out", tmp_path / "plain.json"])
    assert code == 0
    code, out, _ = run_cli(["evaluate", csv_run["run"], "--split", "all", "--device", "cpu", "--tta", "flip",
                            "--out", tmp_path / "flip.json"])
    assert code == 0
    plain, flip = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "flip.json"))
    assert plain["tta"] == "none" and flip["tta"] == "flip"
    assert 0 <= flip["mean_accuracy"] <= 1
    # predict: the flip probabilities are those of the image and of its mirror image, averaged (in logits)
    from attrnet.inference import load_model
    p_none = load_model(csv_run["run"], "cpu", tta="none", precision="fp32")
    p_flip = load_model(csv_run["run"], "cpu", tta="flip", precision="fp32")
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    expected = (p_none.logits(x) + p_none.logits(x.flip(-1))) / 2
    torch.testing.assert_close(p_flip.logits(x), expected, rtol=1e-5, atol=1e-5)
    code, _, err = run_cli(["predict", csv_run["run"], csv_run["data"], "--tta", "flip", "--device", "cpu",
                            "--out", tmp_path / "p.csv"])
    assert code == 0 and (tmp_path / "p.csv").read_text().count("\n") == len(csv_run["rows"]) + 1
    code, _, _ = run_cli(["evaluate", csv_run["run"], "--split", "all", "--device", "cpu", "--tta", "flip_shift",
                          "--out", tmp_path / "shift.json"])
    assert code == 0 and json.loads((tmp_path / "shift.json").read_text())["tta"] == "flip_shift"
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error, exit status 2
        run_cli(["evaluate", csv_run["run"], "--split", "all", "--device", "cpu", "--tta", "rot"])
    assert exc.value.code == 2
