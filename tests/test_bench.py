"""`attrnet bench` on CPU with small sizes: every case reports its figures as one JSON line."""

from __future__ import annotations

import contextlib
import json

import pytest

from attrnet.cli import main

CASES = "seed_loop,dataloader_eager,attrnet_cold,attrnet_warm,predict_folder,predict_runtimes,cache_memory"


@pytest.fixture(scope="module")
def bench_rows(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out = work / "rows.jsonl"
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        main(["bench", "--device", "cpu", "--n", "48", "--image-size", "40", "--batch-size", "16",
              "--attributes", "5", "--cases", CASES, "--workdir", str(work / "w")])
    return {r["case"]: r for r in map(json.loads, out.read_text().splitlines())}


@pytest.mark.slow
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
    runtimes = bench_rows["predict_runtimes"]["runtimes"]
    assert {"torch_fp32", "onnxruntime", "decode_only"} <= set(runtimes)
    assert all(r["n_images"] == 48 and r["images_per_s"] > 0 for r in runtimes.values())
    ratio = runtimes["onnxruntime"]["images_per_s"] / runtimes["torch_fp32"]["images_per_s"]
    assert bench_rows["predict_runtimes"]["onnx_over_torch_eager"] == pytest.approx(ratio, abs=0.006)


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


def test_precision_modes_times_four_modes_interleaved_and_repeated(tmp_path, monkeypatch):
    """Called as run_bench with repeats=2 (the CLI's default is 3 on CPU): 16 images, two batches of 8 (bf16 is
    emulated on CPUs without it, and slow: the smallest run that still has two batches)."""
    import argparse
    import math

    from attrnet.bench import run_bench

    monkeypatch.setenv("ATTRNET_CPU_BF16", "0")  # a CPU without native bf16: auto must be plain fp32
    args = argparse.Namespace(device="cpu", n=16, image_size=32, batch_size=8, attributes=3,
                              backbone="mobilenet_v3_small", cases="precision_modes", data=None, workdir=str(tmp_path),
                              repeats=2)
    row, summary = list(run_bench(args))
    assert "error" not in row, row
    assert (row["repeats"], row["train_images"], row["predict_images"], row["predict_batch_size"]) == (2, 16, 16, 16)
    assert (row["auto"], row["native_bf16"]) == ("fp32", False)
    assert row["torch_threads"] >= 1 and row["peak_rss_mb"] > 50
    modes = row["modes"]
    assert list(modes) == ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    fp32 = modes["fp32"]["train_images_per_s"]["median"]
    for name, m in modes.items():
        for key in ("train_images_per_s", "predict_images_per_s", "train_images_per_cpu_s", "predict_images_per_cpu_s"):
            s = m[key]
            assert len(s["runs"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"], (name, key, s)
            assert s["median"] == pytest.approx(sum(s["runs"]) / 2, abs=0.11)  # median of two: their mean
        assert m["train_over_fp32"] == pytest.approx(m["train_images_per_s"]["median"] / fp32, abs=0.011)
        # the same seed, data and steps in every mode: the losses differ by rounding (bf16: 8-bit mantissa)
        assert math.isfinite(m["timed_epoch_loss"])
        assert m["timed_epoch_loss"] == pytest.approx(modes["fp32"]["timed_epoch_loss"], abs=0.05), name
    assert {modes["fp32"][f"{w}_over_fp32"] for w in ("train", "predict", "train_cpu", "predict_cpu")} == {1.0}
    assert summary["precision_auto"] == "fp32"
    assert summary["precision_predict_over_fp32"] == {n: m["predict_over_fp32"] for n, m in modes.items()}


def test_gpu_summary_puts_each_figure_beside_its_goal(tmp_path):
    """benchmarks/gpu_summary.py over the files gpu_session.sh writes: a figure under its goal fails, a slow
    first unfrozen epoch fails, a failed GPU test fails the whole."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_summary", Path(__file__).parents[1] / "benchmarks" / "gpu_summary.py")
    gpu_summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_summary)
    rows = [{"case": "attrnet_warm", "train_images_per_s": 37_000.0}, {"case": "attrnet_cold", "train_images_per_s": 9_000.0},
            {"case": "predict_folder", "predict_images_per_s": 15_000.0}]
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    (tmp_path / "unfreeze_metrics.csv").write_text("epoch,seconds\n1,9.0\n2,12.8\n3,2.4\n4,2.6\n")
    (tmp_path / "pytest_gpu.txt").write_text("14 passed, 3 skipped in 50.1s\n")
    s = gpu_summary.main(tmp_path)
    assert s["passed"] == {"attrnet_warm": True, "attrnet_cold": False, "predict_folder": True, "unfreeze": False,
                           "gpu_tests": True}
    assert s["rows"]["unfreeze"]["first_unfrozen_over_later"] == round(12.8 / 2.6, 2) and not s["all_passed"]
    (tmp_path / "pytest_gpu.txt").write_text("11 failed, 3 passed in 40s\n")
    assert gpu_summary.main(tmp_path)["passed"]["gpu_tests"] is False
