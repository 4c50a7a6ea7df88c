"""attrnet on Ray (pip install 'attrnet[ray]'): `predict --ray` labels a folder with Ray Data, writes what plain
`predict` writes and resumes a stopped run without redoing finished files; `serve --ray` is the same app as a Ray
Serve deployment, with the plain server's answers and refusals. One local Ray instance (2 CPUs) serves the
module (starting one takes seconds): make test gives each file to one xdist worker (--dist loadfile; the xdist_group
mark keeps it so under --dist loadgroup)."""

from __future__ import annotations

import csv
import logging
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import BAD_UPLOADS, SETTINGS, _post  # noqa: E402

from attrnet.data.images import find_images  # noqa: E402
from attrnet.inference import load_model  # noqa: E402
from attrnet.inference.sources import read_info  # noqa: E402
from attrnet.predict_ray import parts_folder, predict_folder_on_ray  # noqa: E402
from attrnet.serve import ray_serve  # noqa: E402
from attrnet.serve.app import create_app  # noqa: E402
from attrnet.serve.settings import ServeSettings  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")

# CSV prints probabilities with 5 decimals (each within 5e-6 of its value); two fp32 forward passes of one image
# in batches of different sizes may differ in the last bits of the logits (a few 1e-7 after the sigmoid)
CSV_TOLERANCE = 2 * 5e-6 + 1e-6


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    from ray import serve
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def folder(csv_run, tmp_path) -> Path:
    """The run's 20 images and one file that is no image."""
    out = tmp_path / "photos"
    shutil.copytree(csv_run["data"], out, ignore=shutil.ignore_patterns("*.csv", "*.json"))
    (out / "zz-broken.jpg").write_bytes(b"I am text, not pixels")
    return out


def _rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return {Path(r[0]).name: r[1:] for r in rows[1:]} | {"header": rows[0]}


@pytest.mark.slow
def test_predict_on_ray_resumes_and_writes_what_predict_writes(local_ray, csv_run, folder, tmp_path, run_cli):
    run, out = csv_run["run"], tmp_path / "rows.csv"
    paths = find_images([folder])
    assert len(paths) == 21
    info = read_info(run)
    # a run stopped after 2 batches of 4: 8 files in two part files, no output yet
    first = predict_folder_on_ray(str(run), paths, out, info.attributes, info.thresholds, batch_size=4, stop_after=2)
    assert (first.predicted, first.resumed) == (8, 0) and not out.exists()
    assert len(list(parts_folder(out).glob("part-*.npz"))) == 2
    # the same command again predicts only the other 13 and writes everything
    code, stdout, stderr = run_cli(["predict", run, folder, "--ray", "--out", out, "--batch-size", "4"])
    assert code == 0, stderr
    assert "wrote 20 predictions" in stdout and "13 predicted now, 8 finished by an earlier run" in stdout
    assert "skipped 1 unreadable image(s)" in stderr and "zz-broken.jpg" in stderr
    assert not parts_folder(out).exists()
    code, _, stderr = run_cli(["predict", run, folder, "--out", tmp_path / "plain.csv"])
    assert code == 0, stderr
    on_ray, plain = _rows(out), _rows(tmp_path / "plain.csv")
    assert on_ray["header"] == plain["header"] and on_ray.keys() == plain.keys() and len(plain) == 21
    names = info.attributes
    for image in set(plain) - {"header"}:
        a, b = np.asarray(on_ray[image][:len(names)], float), np.asarray(plain[image][:len(names)], float)
        assert np.abs(a - b).max() <= CSV_TOLERANCE, (image, a, b)
        far = np.abs(b - info.thresholds) > CSV_TOLERANCE  # a decision can only differ at its threshold
        assert (np.asarray(on_ray[image][len(names):]) == np.asarray(plain[image][len(names):]))[far].all()
    # Parquet, for millions of rows: the same rows, unrounded
    import pyarrow.parquet as pq
    code, _, stderr = run_cli(["predict", run, folder, "--ray", "--out", tmp_path / "rows.parquet"])
    assert code == 0, stderr
    table = pq.read_table(tmp_path / "rows.parquet").to_pydict()
    assert [Path(p).name for p in table["image"]] == sorted(set(plain) - {"header"})
    for j, name in enumerate(names):
        probs = np.asarray([float(plain[Path(p).name][j]) for p in table["image"]])
        assert np.abs(np.asarray(table[f"{name}_prob"]) - probs).max() <= CSV_TOLERANCE / 2 + 1e-6
        assert (np.asarray(table[name]) == (np.asarray(table[f"{name}_prob"]) >= info.thresholds[j])).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_on_ray_answers_and_refuses_as_the_plain_server(local_ray, csv_run):
    images = sorted(Path(csv_run["data"]).glob("*.jpg"))[:4]
    settings = ServeSettings(**SETTINGS)
    url = ray_serve.run(str(csv_run["run"]), "127.0.0.1", _free_port(), settings, ray_serve.Replicas(1),
                        blocking=False)
    model = load_model(csv_run["run"], device="cpu")
    with httpx.Client(base_url=url, timeout=60) as on_ray, TestClient(create_app(model, settings)) as plain:
        deadline = time.monotonic() + 120
        while True:
            try:
                if on_ray.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray Serve deployment did not answer in 120 s"
            time.sleep(0.5)
        files = [(p.name, p.read_bytes()) for p in images[:3]]
        a, b = _post(on_ray, files).json(), _post(plain, files).json()
        assert [r["file"] for r in a["results"]] == [r["file"] for r in b["results"]] == [p.name for p in images[:3]]
        for ra, rb in zip(a["results"], b["results"]):
            for name, got in ra["attributes"].items():
                # the same torch forward pass on the CPU; batches of other sizes change only the last bits
                assert got["probability"] == pytest.approx(rb["attributes"][name]["probability"], abs=1e-6)
                assert got["threshold"] == rb["attributes"][name]["threshold"]
        for case, (send, status, _) in BAD_UPLOADS.items():
            ra, rb = send(on_ray, images[0].read_bytes()), send(plain, images[0].read_bytes())
            assert (ra.status_code, ra.json()) == (rb.status_code, rb.json()) and ra.status_code == status, case
        # concurrent clients, one request in ten malformed: 200 or the 4xx, never a 5xx
        bad = _post_body(b"\xff\xd8\xff" + b"\0" * 200)

        def one(i: int) -> int:
            if i % 10 == 0:
                return on_ray.post("/v1/predict", content=bad,
                                   headers={"content-type": "multipart/form-data; boundary=B"}).status_code
            return _post(on_ray, [files[i % 3]]).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(200)))
    assert statuses.count(200) == 180 and statuses.count(422) == 20, sorted(set(statuses))


def _post_body(data: bytes) -> bytes:
    return (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--B--\r\n")


def test_replicas_options_and_bounds():
    assert ray_serve.Replicas(2).options() == {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1.0}}
    auto = ray_serve.Replicas(min=1, max=3, cpus=0.5).options()
    assert auto["autoscaling_config"]["min_replicas"] == 1 and auto["autoscaling_config"]["max_replicas"] == 3
    assert auto["ray_actor_options"] == {"num_cpus": 0.5}


def test_ray_options_refuse_bad_input_in_one_line(csv_run, tmp_path, run_cli):
    run = csv_run["run"]
    code, _, err = run_cli(["predict", run, csv_run["data"], "--ray"])
    assert code == 2 and "predict --ray writes its rows to a file: give --out FILE.csv" in err
    code, _, err = run_cli(["predict", run, csv_run["data"], "--ray", "--out", tmp_path / "x.txt"])
    assert code == 2 and "--out must end in .csv, .json, .parquet" in err
    code, _, err = run_cli(["serve", run, "--ray", "--min-replicas", "3", "--max-replicas", "2"])
    assert code == 2 and "--min-replicas 3 is above --max-replicas 2" in err
    assert not (tmp_path / "x.txt").exists()


def test_ray_missing_is_one_line(csv_run, tmp_path, run_cli, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    code, _, err = run_cli(["predict", csv_run["run"], csv_run["data"], "--ray", "--out", tmp_path / "r.csv"])
    assert code == 2 and "predict --ray needs Ray Data: pip install 'attrnet[ray]'" in err
    code, _, err = run_cli(["serve", csv_run["run"], "--ray"])
    assert code == 2 and "serving on Ray needs Ray Serve: pip install 'attrnet[ray]'" in err
    assert not (tmp_path / "r.csv").exists()
