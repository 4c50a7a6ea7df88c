"""A new user's first hour (issue 27): each rough edge a newcomer hit, with the behaviour that replaced it.

Other items are checked where their code is tested: one row per input and NaN rows (test_inference.py), BMP and
TIFF and the skip reasons (test_core_cli.py), a file that is not a model and `checkpoint upgrade` of a safe file
(test_safe_loading.py), the README's commands as typed (test_readme.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attrnet.inference import load_model

REPO = Path(__file__).resolve().parents[1]


def _files(csv_run) -> list[Path]:
    return sorted(Path(csv_run["data"]).glob("*.jpg"))


# 2 -----------------------------------------------------------------------------------------------------------
def test_predict_takes_one_image_alone(csv_run):
    """A single path (str or Path), bytes, PIL image or array is one image, not a sequence of them."""
    model = load_model(csv_run["run"], "cpu", precision="fp32")
    path = _files(csv_run)[0]
    together = model.predict([path]).probabilities
    for one in (str(path), path, path.read_bytes(), Image.open(path), np.asarray(Image.open(path).convert("RGB"))):
        result = model.predict(one)
        assert result.probabilities.shape == (1, 2) and not result.failed, type(one)
        np.testing.assert_allclose(result.probabilities, together, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="predict\\(\\) takes an image"):
        model.predict(42)


# 12, 17 ------------------------------------------------------------------------------------------------------
def test_rgba_arrays_and_png_paths_follow_one_rule(csv_run, tmp_path):
    """H x W x 4 arrays (np.array of an RGBA PNG) read as the PNG by path does: alpha dropped; junk bytes get a
    message that names the input, not a Python object's address."""
    model = load_model(csv_run["run"], "cpu", precision="fp32")
    rgb = np.asarray(Image.open(_files(csv_run)[0]).convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "x.png")
    by_path = model.predict(tmp_path / "x.png").probabilities
    for arr in (np.array(Image.open(tmp_path / "x.png")), rgba.transpose(2, 0, 1).copy()):
        assert arr.shape[-1] == 4 or arr.shape[0] == 4
        np.testing.assert_allclose(model.predict([arr]).probabilities, by_path, rtol=0, atol=1e-6)
    result = model.predict([b"junk"])
    (index, why), = result.failed
    assert index == 0 and why == ("cannot decode image input 0: not an image in a format attrnet reads (JPEG, PNG, "
                                  "GIF, WebP, BMP or TIFF)")
    bad = model.predict([np.zeros((5, 6, 2), np.uint8)]).failed[0][1]
    assert "[H, W], [H, W, C] or [C, H, W] with C = 1, 3 or 4" in bad


def test_a_read_only_array_gives_no_warning(csv_run):
    import warnings
    model = load_model(csv_run["run"], "cpu", precision="fp32")
    frozen = np.asarray(Image.open(_files(csv_run)[0]).convert("RGB"))
    assert not frozen.flags.writeable
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")  # torch's, for a read-only array
        assert model.predict([frozen]).probabilities.shape == (1, 2)


# 6 -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_and_predict_print_no_third_party_logs_and_no_progress_escapes(csv_run, tmp_path):
    """stderr not a terminal (a log file): no progress-bar escapes, no onnxscript INFO lines; attrnet's own
    lines only, and --quiet leaves warnings and errors only."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "attrnet", "export", str(csv_run["run"]), "--format", "onnx",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and all(" model " in ln or "weights" in ln for ln in lines), lines
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "attrnet", "--quiet", "predict", str(csv_run["run"]),
                           str(csv_run["data"]), "--out", str(tmp_path / "p.csv"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# 7, 19 -------------------------------------------------------------------------------------------------------
def test_exports_are_readable_by_others_and_never_clobbered(run_cli, csv_run, tmp_path):
    """The hub folder is 0755 and its files 0644 (under a 022 umask); an existing export (ONNX or hub) is
    replaced only with --overwrite, for both formats the same."""
    old = os.umask(0o022)
    try:
        hub = tmp_path / "hub"
        assert run_cli(["export", csv_run["run"], "--format", "hub", "--out", hub])[0] == 0
        assert hub.stat().st_mode & 0o777 == 0o755
        assert {p.name: p.stat().st_mode & 0o777 for p in hub.iterdir()} == {
            "config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644}
        # an earlier ONNX export: two files the refusal must leave as they are (an export takes seconds; what
        # the files hold does not matter to the refusal, and --overwrite must replace both with a real export)
        onnx = tmp_path / "m.onnx"
        onnx.write_bytes(b"an earlier export")
        onnx.with_suffix(".json").write_text("{}")
        for fmt, out in (("onnx", onnx), ("hub", hub)):
            stamp = sorted((p.name, p.stat().st_mtime_ns) for p in ([out] if out.is_file() else out.iterdir()))
            code, _, err = run_cli(["export", csv_run["run"], "--format", fmt, "--out", out])
            assert code == 2 and "exists; add --overwrite to replace it" in err
            assert sorted((p.name, p.stat().st_mtime_ns) for p in ([out] if out.is_file() else out.iterdir())) == stamp
            assert run_cli(["export", csv_run["run"], "--format", fmt, "--out", out, "--overwrite"])[0] == 0
        assert sorted(p.name for p in hub.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        import onnx as onnxlib
        assert onnxlib.load(str(onnx)).graph.input[0].name == "images"  # replaced by the new export...
        assert json.loads(onnx.with_suffix(".json").read_text())["attributes"] == csv_run["names"]  # ...and its sidecar
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left behind
    finally:
        os.umask(old)


# 8 -----------------------------------------------------------------------------------------------------------
def test_the_card_of_a_synthetic_run_says_synthetic(tmp_path):
    """A run on `attrnet data synth`'s faces: the card, its front matter and the export say what the data was;
    no CelebA name, data set id or terms."""
    from attrnet.card import model_card
    from attrnet.inference.sources import read_info
    from attrnet.data.synthetic import write_synthetic_celeba
    from attrnet.engine.train import fit
    from conftest import tiny_config

    data = write_synthetic_celeba(tmp_path / "synth", 24, seed=0, size=(16, 16))
    fit(tiny_config(tmp_path / "cache", data__root=data), tmp_path / "run", progress=False)
    info = read_info(tmp_path / "run")
    assert info.trained_on["dataset"] == "synthetic" and info.preprocessing.input == "image"
    card = model_card(info)
    front = card.split("---")[1]
    assert "synthetic faces (attrnet data synth)" in card and "CelebA" not in card and "celeba" not in front
    assert "datasets:" not in front and "license: unknown" in front
    assert "Every threshold" in card or "tuned per attribute" in card


# 9, 10, 11 ---------------------------------------------------------------------------------------------------
def test_bad_port_and_bad_override_are_one_named_line(run_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's usage error: the shell sees exit code 2
        run_cli(["serve", tmp_path, "--port", "99999"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == "attrnet: error: argument --port: must be from 0 to 65535, got 99999 (see attrnet serve --help)\n"
    code, _, err = run_cli(["train", "--config", REPO / "configs" / "synthetic.yaml", "train.epochs=-1",
                            "--out", tmp_path / "r"])
    assert code == 2 and err == "attrnet: error: override train.epochs=-1: train.epochs must be >= 1, got -1\n"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [["train", "--config", "nowhere.yaml"],
                                  ["train", "--config", "configs/synthetic.yaml", "train.epochs=-1"],
                                  ["train", "--config", "configs/synthetic.yaml", "data.format=parquet"]])
def test_a_config_mistake_is_reported_before_torch_is_imported(argv):
    """What keeps 'a typo fails in the first second' true: the config is read and checked before torch (several
    seconds to import) is loaded; only a backbone name needs torchvision's list, and is checked last."""
    code = ("import sys; from attrnet.cli import main; rc = main(" + repr(argv) + "); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("attrnet: error:") and proc.stderr.count("\n") == 1


# 13 ----------------------------------------------------------------------------------------------------------
def test_the_terminal_table_shows_decisions_and_thresholds(run_cli, csv_run):
    code, out, err = run_cli(["predict", csv_run["run"], csv_run["data"], "--device", "cpu"])
    assert code == 0, err
    lines = out.splitlines()
    model = load_model(csv_run["run"], "cpu")
    assert lines[1].split() == ["threshold"] + [f"{t:.2f}" for t in model.thresholds]
    result = model.predict(_files(csv_run))
    for line, probs, decisions in zip(lines[2:], result.probabilities, result.decisions):
        cells = line.split()[1:]
        assert [c.endswith("*") for c in cells] == [bool(d) for d in decisions]
        assert [float(c.rstrip("*")) for c in cells] == pytest.approx(probs, abs=0.005)
    assert lines[-1].startswith("* = yes")


# 14 ----------------------------------------------------------------------------------------------------------
def test_compare_with_one_seed_shows_no_spread_and_one_summary():
    from attrnet.compare import format_markdown
    row = {"method": "ew", "seeds": 1, "delta_m_mean": 0.0, "delta_m_std": float("nan"), "mean_rank": 1.0,
           "epoch_time_vs_ew": 1.0}
    for key in ("accuracy", "balanced_accuracy", "f1", "average_precision"):
        row[f"{key}_mean"], row[f"{key}_std"] = 0.9, float("nan")
    table = format_markdown([row])
    assert "±" not in table and "| ew | 1 | 0.9000 | 0.9000 | 0.9000 | 0.9000 | +0.00 |" in table
    src = (REPO / "src" / "attrnet" / "compare.py").read_text()
    assert "runs trained" not in src  # the summary line is the CLI's alone


# 15 ----------------------------------------------------------------------------------------------------------
def test_a_request_without_a_body_is_the_documented_400():
    """docs/serving.md: no body -> 400 (curl -X POST with no data sends neither a length nor a type)."""
    import asyncio

    from attrnet.serve.uploads import UploadError, read_uploads

    async def nothing():
        if False:
            yield b""
    for content_type, length in ((None, None), (None, "0"), ("multipart/form-data; boundary=x", "0")):
        with pytest.raises(UploadError) as err:
            asyncio.run(read_uploads(nothing(), content_type, length, 2**20, 4, 5.0))
        assert err.value.status == 400 and "no body" in err.value.message
    docs = (REPO / "docs" / "serving.md").read_text()
    assert "| no body, empty multipart" in docs and "| 400 |" in docs.split("| no body, empty multipart")[1][:200]


# 18 ----------------------------------------------------------------------------------------------------------
def test_evaluate_by_leaves_the_split_attribute_out_as_the_card_does(run_cli, csv_run, tmp_path):
    out = tmp_path / "e.json"
    code, printed, err = run_cli(["evaluate", csv_run["run"], "--by", "A", "--out", out, "--device", "cpu"])
    assert code == 0, err
    sub = json.loads(out.read_text())["subgroups"]["A"]
    assert list(sub["1"]["attributes"]) == list(sub["0"]["attributes"]) == ["B"]
    table = printed.split("subgroups by the true label of A")[1]
    assert not any(line.startswith("A ") for line in table.splitlines())


def test_demo_hint_names_a_command_that_runs_here(monkeypatch, tmp_path):
    """`make demo` runs .venv/bin/attrnet without activating .venv: its "try:" line must name that script then."""
    import shutil as _shutil

    from attrnet import cli
    monkeypatch.setattr(_shutil, "which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    script = Path(cli._attrnet_command())
    assert script.name == "attrnet" and script.is_file() and os.access(script, os.X_OK)
    monkeypatch.setattr(_shutil, "which", lambda name: "/usr/local/bin/attrnet")
    assert cli._attrnet_command() == "attrnet"
