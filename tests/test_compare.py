"""`attrnet compare`: runs per (method, seed) on one prepared data set, finished runs skipped, and a table that
is exactly the runs' own metrics.json (mean and std over seeds, Delta m against ew, mean rank)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import random_csv_rows, tiny_config, tiny_overrides, write_csv_folder

from attrnet import compare
from attrnet.errors import AttrnetError

METRICS = ("accuracy", "balanced_accuracy", "f1", "average_precision")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    rows = random_csv_rows(24, ["A", "B", "C"], seed=3)
    data = write_csv_folder(base / "data", ["image", "A", "B", "C"], rows)
    yield base, data
    shutil.rmtree(base, ignore_errors=True)  # a dozen runs' checkpoints: the disk is not the suite's to fill


def _overrides(base, data):
    return tiny_overrides(base / "cache", data__root=data, data__format="csv", data__val_fraction=0.25,
                          data__test_fraction=0.25, model__small_input="true", train__precision="fp32")


def _metrics(out, method, seed) -> dict:
    return json.loads((out / method / f"seed{seed}" / "metrics.json").read_text())


def test_compare_trains_each_run_once_and_the_table_is_the_runs_metrics(folder, monkeypatch, run_cli):
    from attrnet.config import load_config
    base, data = folder
    out = base / "cmp"
    cfg = load_config(None, _overrides(base, data))
    prepared = []
    real_prepare = compare.prepare_data
    monkeypatch.setattr(compare, "prepare_data", lambda *a, **k: prepared.append(1) or real_prepare(*a, **k))
    result = compare.run_comparison(cfg, ["ew", "latent"], [0, 1], out, progress=False)
    assert result["trained"] == 4 and result["skipped"] == 0 and len(prepared) == 1  # one cache, one split
    # each run is the method it names, with its seed; the latent head is a method
    for method, seed in [("ew", 0), ("ew", 1), ("latent", 0), ("latent", 1)]:
        stored = (out / method / f"seed{seed}" / "config.yaml").read_text()
        assert f"seed: {seed}" in stored
        assert ("head: latent" in stored) == (method == "latent")

    rows = {r["method"]: r for r in result["rows"]}
    for method in ("ew", "latent"):
        runs = [_metrics(out, method, s) for s in (0, 1)]
        for key in METRICS:
            values = [r[f"mean_{key}"] for r in runs]
            assert rows[method][f"{key}_mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert rows[method][f"{key}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    # Delta m: ew against itself averages to 0; latent by hand, attribute by attribute
    names = list(_metrics(out, "ew", 0)["attributes"])

    def per(method, seed):
        m = _metrics(out, method, seed)["attributes"]
        return np.array([[m[a][k] for k in METRICS] for a in names], dtype=float)
    base_mean = (per("ew", 0) + per("ew", 1)) / 2
    ok = np.isfinite(base_mean) & (base_mean != 0)  # a 0 (an F1 of 0 on tiny data) has no relative change
    assert ok.sum() >= len(names)
    deltas = [100 * np.nanmean((per("latent", s)[ok] - base_mean[ok]) / base_mean[ok]) for s in (0, 1)]
    assert rows["latent"]["delta_m_mean"] == pytest.approx(np.mean(deltas), abs=1e-9)
    assert rows["ew"]["delta_m_mean"] == pytest.approx(0.0, abs=1e-9)
    # mean ranks of two methods: 1 and 2 on each (attribute, metric), so they sum to 3
    assert rows["ew"]["mean_rank"] + rows["latent"]["mean_rank"] == pytest.approx(3.0)
    assert rows["ew"]["epoch_time_vs_ew"] == pytest.approx(1.0)
    # the files: CSV with the same numbers, Markdown, plot
    with open(out / "comparison.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["ew", "latent"]
    assert float(table[1]["accuracy_mean"]) == pytest.approx(rows["latent"]["accuracy_mean"])
    md = (out / "comparison.md").read_text()
    assert md.count("\n") == 4 and "| latent |" in md and "Δm %" in md
    assert (out / "comparison.png").stat().st_size > 1000

    # The CLI, with one more method: only its runs train; the finished ones are not touched.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.json")}
    code, stdout, _ = run_cli(["compare", "--methods", "ew,latent,uw", "--seeds", "0,1", "--out", out,
                               *_overrides(base, data)])
    assert code == 0, stdout
    assert "2 runs trained, 4 finished before" in stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (out / "uw" / "seed1" / "metrics.json").is_file()
    assert "| uw |" in (out / "comparison.md").read_text()
    # a run stopped after its last epoch but before its evaluation is finished, not retrained
    (out / "uw" / "seed1" / "metrics.json").unlink()
    again = compare.run_comparison(cfg, ["ew", "uw"], [0, 1], out, progress=False)
    assert again["trained"] == 1 and (out / "uw" / "seed1" / "metrics.json").is_file()


def test_compare_refuses_a_folder_of_another_config_and_bad_arguments(folder, tmp_path):
    base, data = folder
    cfg = tiny_config(base / "cache", data__root=data, data__format="csv")
    run = tmp_path / "cmp" / "ew" / "seed0"
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("not a run")
    with pytest.raises(AttrnetError, match="holds no run"):
        compare.run_comparison(cfg, ["ew"], [0], tmp_path / "cmp", progress=False)
    with pytest.raises(AttrnetError, match="unknown method 'gradnorm'"):
        compare.parse_methods("ew,gradnorm")
    with pytest.raises(AttrnetError, match="each method once"):
        compare.parse_methods("ew,ew")
    with pytest.raises(AttrnetError, match="whole numbers"):
        compare.parse_seeds("0,one")
    assert compare.parse_methods(" ew, latent ,mgda") == ["ew", "latent", "mgda"]
    assert compare.parse_seeds("0,1,2") == [0, 1, 2]
