"""`attrnet bench` on CPU with small sizes: every case reports its figures as one JSON line."""

from __future__ import annotations

import contextlib
import json

import pytest

from attrnet.cli import main

CASES = "seed_loop,dataloader_eager,attrnet_cold,attrnet_warm,predict_folder,cache_memory"


@pytest.fixture(scope="module")
def bench_rows(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out = work / "rows.jsonl"
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        main(["bench", "--device", "cpu", "--n", "48", "--image-size", "40", "--batch-size", "16",
              "--attributes", "5", "--cases", CASES, "--workdir", str(work / "w")])
    return {r["case"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_every_case_reports_its_throughput_and_memory(bench_rows):
    assert list(bench_rows) == CASES.split(",") + ["summary"]
    for case in CASES.split(","):
        row = bench_rows[case]
        assert "error" not in row and "skipped" not in row, row
        batch = 1 if case == "seed_loop" else 16  # the seed's loop steps on one image at a time
        assert (row["device"], row["batch_size"], row["image_size"], row["attributes"]) == ("cpu", batch, 40, 5)
        assert row["peak_gpu_mem_mb"] is None and row["peak_rss_mb"] > 50
    for case in ("seed_loop", "dataloader_eager", "attrnet_cold", "attrnet_warm"):
        assert bench_rows[case]["train_images_per_s"] > 0
    assert bench_rows["seed_loop"]["steps"] == bench_rows["seed_loop"]["n_images"] == 20
    # 48 images in batches of 16: three full batches an epoch; the warm case times two epochs
    assert bench_rows["attrnet_cold"]["n_images"] == 48 and bench_rows["attrnet_warm"]["n_images"] == 96
    assert bench_rows["predict_folder"]["n_images"] == 48 and bench_rows["predict_folder"]["unreadable"] == 0
    assert bench_rows["predict_folder"]["predict_images_per_s"] > 0
    assert bench_rows["cache_memory"]["n_images"] == 48 and bench_rows["cache_memory"]["cache_mb"] > 0


def test_summary_compares_attrnet_with_the_seed_loop(bench_rows):
    s = bench_rows["summary"]
    speed = s["train_images_per_s"]
    assert set(speed) == {"seed_loop", "dataloader_eager", "attrnet_cold", "attrnet_warm"}
    assert s["attrnet_warm_over_seed_loop"] == pytest.approx(speed["attrnet_warm"] / speed["seed_loop"], abs=0.06)


def test_seed_loop_is_skipped_with_a_reason_below_33_px(tmp_path, capsys):
    main(["bench", "--device", "cpu", "--n", "16", "--image-size", "32", "--attributes", "3",
          "--cases", "seed_loop", "--workdir", str(tmp_path)])
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["case"] == "seed_loop" and "image-size above 32" in row["skipped"]


def test_unknown_case_is_a_one_line_error(tmp_path, capsys):
    code = main(["bench", "--device", "cpu", "--cases", "warp_speed", "--workdir", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown bench case(s) warp_speed" in err
