"""attrnet serve: every endpoint through an in-process client, every kind of bad upload (a 4xx with a JSON
reason, and the server keeps serving), batching across concurrent requests, inference off the event loop,
a slow client that cannot stall the others (a real server on 127.0.0.1), the API key and CORS switches."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, ...) is not installed")
pytest.importorskip("python_multipart", reason="the serve extra (python-multipart) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from attrnet.inference import load_model  # noqa: E402
from attrnet.serve.app import create_app  # noqa: E402
from attrnet.serve.batching import Batcher  # noqa: E402
from attrnet.serve.server import exposure_warning, is_loopback  # noqa: E402
from attrnet.serve.settings import ServeSettings  # noqa: E402

LIMIT_BYTES = 256 * 1024
SETTINGS = dict(max_files=3, max_upload_mb=LIMIT_BYTES / 2**20, max_wait_ms=2.0)
FORM = {"content-type": "multipart/form-data; boundary=XyZb0und4ry"}


@pytest.fixture(scope="module")
def model(csv_run):
    return load_model(csv_run["run"], device="cpu")


@pytest.fixture(scope="module")
def images(csv_run) -> list[Path]:
    return sorted(Path(csv_run["data"]).glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServeSettings(**SETTINGS))) as c:
        yield c


def _post(client, files: list[tuple[str, bytes]], field: str = "file", **kw):
    return client.post("/v1/predict", files=[(field, (name, data, "application/octet-stream")) for name, data in files],
                       **kw)


def _jpeg_bytes(path: Path) -> bytes:
    return path.read_bytes()


# ---------------------------------------------------------------- the endpoints


def test_predict_gives_the_library_probabilities(client, model, images):
    r = _post(client, [(p.name, p.read_bytes()) for p in images[:2]])
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.predict(images[:2])
    assert body["attributes"] == ["A", "B"]
    assert [res["file"] for res in body["results"]] == [images[0].name, images[1].name]
    for i, res in enumerate(body["results"]):
        for j, name in enumerate(expected.attributes):
            got = res["attributes"][name]
            assert got["probability"] == pytest.approx(float(expected.probabilities[i, j]), abs=1e-6)
            assert got["threshold"] == pytest.approx(float(expected.thresholds[j]))
            assert got["decision"] == int(expected.decisions[i, j])
    assert "groups" not in body  # the csv model has none


def test_model_endpoint_has_thresholds_metrics_and_baseline(client, model, csv_run):
    r = client.get("/v1/model")
    assert r.status_code == 200
    body = r.json()
    metrics = json.loads((Path(csv_run["run"]) / "metrics.json").read_text())
    assert body["attributes"] == ["A", "B"]
    assert body["thresholds"] == {a: pytest.approx(float(t)) for a, t in zip(model.attributes, model.thresholds)}
    assert body["image_size"] == [16, 16] and body["grayscale"] is False
    assert body["test_metrics"]["mean_accuracy"] == pytest.approx(metrics["mean_accuracy"])
    assert body["majority_baseline"] == pytest.approx(metrics["mean_majority_accuracy"])
    assert body["limits"] == {"max_files": 3, "max_upload_bytes": LIMIT_BYTES, "max_batch": 32, "field": "file"}
    assert body["groups"] is None


def test_groups_are_returned_when_the_model_has_them(csv_run, images):
    grouped = load_model(csv_run["run"], device="cpu")
    grouped.info.groups = {"first": ["A"], "second": ["B"]}
    with TestClient(create_app(grouped)) as c:
        assert c.get("/v1/model").json()["groups"] == {"first": ["A"], "second": ["B"]}
        body = _post(c, [(images[0].name, images[0].read_bytes())]).json()
    assert body["groups"] == {"first": ["A"], "second": ["B"]}


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_prometheus_metrics_count_requests_latency_and_batches(model, images):
    from prometheus_client.parser import text_string_to_metric_families

    with TestClient(create_app(model, ServeSettings(**SETTINGS))) as c:
        for _ in range(3):
            assert _post(c, [(images[0].name, images[0].read_bytes())]).status_code == 200
        assert _post(c, [("bad.txt", b"not an image")]).status_code == 422
        text = c.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    ok = (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "200"))
    bad = (("endpoint", "/v1/predict"), ("method", "POST"), ("status", "422"))
    assert samples[("attrnet_http_requests_total", ok)] == 3
    assert samples[("attrnet_http_requests_total", bad)] == 1
    assert samples[("attrnet_http_request_duration_seconds_count", (("endpoint", "/v1/predict"),))] == 4
    assert samples[("attrnet_batch_size_count", ())] == 3  # three forward passes of one image
    assert samples[("attrnet_batch_size_sum", ())] == 3
    assert samples[("attrnet_images_predicted_total", ())] == 3


# ---------------------------------------------------------------- bad uploads


def _truncated_jpeg(path: Path) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: int(len(data) * 0.6)]


def _bomb_png() -> bytes:
    """A real PNG of 8000 x 8000 one-bit pixels: a few kilobytes that decode to 64 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZb0und4ry", close: bool = True) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


BAD_UPLOADS = {
    # name: (how to send it, expected status, a word the error must contain)
    "no body": (lambda c, img: c.post("/v1/predict"), 400, "no body"),
    "empty multipart body": (lambda c, img: c.post("/v1/predict", content=b"",
                                                    headers={"content-type": "multipart/form-data; boundary=x"}),
                             400, "no body"),
    "not multipart": (lambda c, img: c.post("/v1/predict", content=img, headers={"content-type": "image/jpeg"}),
                      415, "multipart/form-data"),
    "json instead": (lambda c, img: c.post("/v1/predict", json={"file": "a.jpg"}), 415, "multipart/form-data"),
    "no file field": (lambda c, img: _post(c, [("a.jpg", img)], field="image"), 400, "field named 'file'"),
    "only a text field": (lambda c, img: c.post("/v1/predict", data={"note": "hi"},
                                                files=[("other", ("x", b"y"))]), 400, "no file"),
    "zero bytes": (lambda c, img: _post(c, [("empty.jpg", b"")]), 400, "empty"),
    "not an image": (lambda c, img: _post(c, [("notes.txt", b"hello, I am text, not pixels\n" * 10)]), 422,
                     "not a readable image"),
    "truncated JPEG": (lambda c, img: _post(c, [("cut.jpg", _truncated_jpeg(img))]), 422, "truncated"),
    "decompression bomb": (lambda c, img: _post(c, [("bomb.png", _bomb_png())]), 422, "decompression bomb"),
    "declared pixels absurd": (lambda c, img: _post(c, [("huge.png", _png_header(60000, 60000))]), 413,
                               "pixels"),
    "over the byte limit": (lambda c, img: _post(c, [("big.jpg", b"\xff" * (LIMIT_BYTES + 10))]), 413, "limit"),
    "too many files": (lambda c, img: _post(c, [(f"{i}.jpg", img) for i in range(4)]), 413, "too many files"),
    "one bad among good": (lambda c, img: _post(c, [("good.jpg", img), ("bad.txt", b"text")]), 422, "bad.txt"),
    "unclosed multipart": (lambda c, img: c.post("/v1/predict", content=_multipart([("file", "a.jpg", img)],
                                                                                   close=False),
                                                 headers={"content-type": "multipart/form-data; boundary=XyZb0und4ry"}),
                           400, "closing boundary"),
    "no boundary": (lambda c, img: c.post("/v1/predict", content=b"abc",
                                          headers={"content-type": "multipart/form-data"}), 400, "boundary"),
    "garbage multipart": (lambda c, img: c.post("/v1/predict", content=b"this is no multipart body at all",
                                                headers={"content-type": "multipart/form-data; boundary=XyZ"}),
                          400, "malformed"),
    "bad content-length": (lambda c, img: c.post("/v1/predict", content=b"abc",
                                                 headers={"content-type": "multipart/form-data; boundary=x",
                                                          "content-length": "3"}), 400, None),
}


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is missing."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_4xx_with_a_reason_and_the_server_keeps_serving(client, images, case):
    send, status, word = BAD_UPLOADS[case]
    r = send(client, images[0].read_bytes())
    assert r.status_code == status, (case, r.status_code, r.text)
    body = r.json()
    assert set(body) <= {"error", "files"} and isinstance(body["error"], str) and body["error"]
    if word:
        assert word in body["error"], body["error"]
    good = _post(client, [(images[1].name, images[1].read_bytes())])
    assert good.status_code == 200


def test_mangled_uploads_never_get_a_5xx(model, images):
    """Bytes flipped in the image, in the multipart framing, cut short, or random bodies: 200 or a 4xx, never 5xx."""
    import random

    rng = random.Random(0)
    base = images[0].read_bytes()
    png = io.BytesIO()
    Image.open(images[1]).save(png, "PNG")
    statuses = []
    with TestClient(create_app(model, ServeSettings(**SETTINGS)), raise_server_exceptions=False) as c:
        for i in range(80):
            data = bytearray(base if i % 2 else png.getvalue())
            kind = i % 4
            if kind == 0:
                for _ in range(rng.randrange(1, 20)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                body = _multipart([("file", "a.jpg", bytes(data))])
            elif kind == 1:
                body = _multipart([("file", "a.jpg", bytes(data[: rng.randrange(1, len(data))]))])
            elif kind == 2:
                body = bytearray(_multipart([("file", "a.jpg", bytes(data))]))
                for _ in range(rng.randrange(1, 5)):
                    body[rng.randrange(100)] = rng.randrange(256)
                body = bytes(body)
            else:
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            r = c.post("/v1/predict", content=body, headers=FORM)
            statuses.append(r.status_code)
            assert r.status_code == 200 or (400 <= r.status_code < 500 and r.json()["error"]), (i, r.text)
    assert statuses.count(200) < len(statuses) and any(400 <= s < 500 for s in statuses)


def test_a_bad_file_among_good_ones_is_named(client, images):
    r = _post(client, [("good.jpg", images[0].read_bytes()), ("bad.txt", b"text"), ("empty2.txt", b"zz")])
    assert r.status_code == 422
    files = r.json()["files"]
    assert [f["file"] for f in files] == ["bad.txt", "empty2.txt"]
    assert r.json()["error"].startswith("2 files could not be used")


def test_over_the_limit_is_refused_while_streaming(model, images):
    """A chunked upload with no Content-Length: the server stops reading at the first chunk past the limit,
    and a declared Content-Length over the limit is refused before any of the body is read."""
    app = create_app(model, ServeSettings(**SETTINGS))
    chunk, n_chunks = 16 * 1024, 64  # 1 MB offered, 256 KB allowed
    pulled = []

    async def body():
        yield _multipart([("file", "big.jpg", b"")], close=False)[:-2]
        for i in range(n_chunks):
            pulled.append(i)
            yield b"\0" * chunk

    async def run(content, headers=None):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post("/v1/predict", content=content, headers={
                "content-type": "multipart/form-data; boundary=XyZb0und4ry", **(headers or {})})

    r = asyncio.run(run(body()))
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert len(pulled) <= LIMIT_BYTES // chunk + 2 < n_chunks  # never read whole
    pulled.clear()
    r = asyncio.run(run(body(), {"content-length": str(n_chunks * chunk)}))
    assert r.status_code == 413 and str(n_chunks * chunk) in r.json()["error"]
    assert len(pulled) <= 1


def test_unknown_endpoint_and_method_are_json(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]
    r = client.get("/v1/predict")
    assert r.status_code == 405 and "GET" in r.json()["error"]
    assert client.get("/static/../app.py").status_code == 404


# ---------------------------------------------------------------- batching


def test_batcher_batches_concurrent_requests_in_order():
    sizes = []

    def infer(batch: torch.Tensor) -> np.ndarray:
        sizes.append(len(batch))
        time.sleep(0.02)
        return batch.float().mean(dim=(1, 2, 3)).numpy()[:, None]

    async def run(max_batch: int):
        b = Batcher(infer, max_batch=max_batch, max_wait_ms=20)
        await b.start()
        try:
            requests = [[torch.full((1, 2, 2), 10 * r + i, dtype=torch.uint8) for i in range(r % 3 + 1)]
                        for r in range(10)]
            results = await asyncio.gather(*(b.submit(imgs) for imgs in requests))
        finally:
            await b.stop()
        for imgs, res in zip(requests, results):
            assert res[:, 0].tolist() == [float(img[0, 0, 0]) for img in imgs]  # each request gets its own rows
        return sum(len(r) for r in requests)

    total = asyncio.run(run(max_batch=8))
    assert sum(sizes) == total == 19 and max(sizes) <= 8 and len(sizes) < total  # batched together
    assert max(sizes) > 1
    sizes.clear()
    asyncio.run(run(max_batch=1))
    assert sizes == [1] * 19


def test_inference_runs_off_the_event_loop():
    """A forward pass that blocks for 0.4 s: the event loop keeps ticking meanwhile."""
    ticks = []

    def slow_infer(batch):
        time.sleep(0.4)
        return np.zeros((len(batch), 1))

    async def run():
        b = Batcher(slow_infer, max_batch=4, max_wait_ms=0)
        await b.start()

        async def ticker():
            for _ in range(20):
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        try:
            await asyncio.gather(b.submit([torch.zeros(1, 2, 2, dtype=torch.uint8)]), ticker())
        finally:
            await b.stop()

    asyncio.run(run())
    assert len(ticks) == 20 and max(np.diff(ticks)) < 0.3  # on the loop, one gap would be >= 0.4 s


def test_a_client_gone_before_its_turn_is_skipped():
    seen = []

    def infer(batch):
        seen.append(len(batch))
        time.sleep(0.1)
        return np.zeros((len(batch), 1))

    async def run():
        b = Batcher(infer, max_batch=1, max_wait_ms=0)
        await b.start()
        try:
            first = asyncio.create_task(b.submit([torch.zeros(1, 1, 1, dtype=torch.uint8)]))
            gone = asyncio.create_task(b.submit([torch.zeros(1, 1, 1, dtype=torch.uint8)] * 3))
            await asyncio.sleep(0.02)
            gone.cancel()
            await first
            after = await b.submit([torch.zeros(1, 1, 1, dtype=torch.uint8)])
        finally:
            await b.stop()
        return after

    assert asyncio.run(run()).shape == (1, 1)
    assert seen == [1, 1]  # the cancelled request's three images never ran


# ---------------------------------------------------------------- a real server: slow clients, timeouts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(model):
    """The application under uvicorn in a thread, on 127.0.0.1, with a 3 s upload timeout."""
    import uvicorn

    port = _free_port()
    app = create_app(model, ServeSettings(**{**SETTINGS, "upload_timeout_s": 3.0}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_a_slow_client_does_not_stall_the_others(live_server, images):
    """One client sends half of its upload and stops; other requests are answered meanwhile, and the slow
    one gets a 408 when its time is up."""
    port = int(live_server.rsplit(":", 1)[1])
    body = _multipart([("file", "slow.jpg", images[0].read_bytes())])
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZb0und4ry"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2])
    try:
        with httpx.Client(base_url=live_server, timeout=10) as c:
            for p in images[1:3]:
                r = c.post("/v1/predict", files={"file": (p.name, p.read_bytes())})
                assert r.status_code == 200
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):  # answered while the slow upload was still pending
            slow.recv(1)
        slow.setblocking(True)
        slow.settimeout(10)
        reply = b""
        while chunk := slow.recv(4096):  # the server closes the connection after its 408
            reply += chunk
        reply = reply.decode("latin-1")
    finally:
        slow.close()
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert '"error"' in reply and "did not arrive" in reply


def test_concurrent_requests_share_forward_passes(live_server, images):
    from prometheus_client.parser import text_string_to_metric_families

    def batches() -> tuple[float, float]:
        text = httpx.get(f"{live_server}/metrics").text
        fam = {f.name: f for f in text_string_to_metric_families(text)}["attrnet_batch_size"]
        values = {s.name: s.value for s in fam.samples if not s.labels}
        return values["attrnet_batch_size_count"], values["attrnet_batch_size_sum"]

    count0, sum0 = batches()

    async def run():
        async with httpx.AsyncClient(base_url=live_server, timeout=30) as c:
            payload = [("file", (p.name, p.read_bytes())) for p in images[:3]]
            return await asyncio.gather(*(c.post("/v1/predict", files=payload) for _ in range(12)))

    replies = asyncio.run(run())
    assert all(r.status_code == 200 for r in replies)
    count1, sum1 = batches()
    assert sum1 - sum0 == 36
    assert count1 - count0 < 36  # some requests' images went through the network together


# ---------------------------------------------------------------- switches: key, CORS, host


def test_api_key_guards_the_api_only(model, images):
    with TestClient(create_app(model, ServeSettings(api_key="s3cret"))) as c:
        r = c.get("/v1/model")
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert c.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert _post(c, [("a.jpg", images[0].read_bytes())]).status_code == 401
        assert _post(c, [("a.jpg", images[0].read_bytes())], headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_cors_is_off_unless_asked(model):
    origin = {"Origin": "http://elsewhere.example"}
    with TestClient(create_app(model)) as c:
        assert "access-control-allow-origin" not in c.get("/v1/model", headers=origin).headers
    with TestClient(create_app(model, ServeSettings(cors_origins=["http://elsewhere.example"]))) as c:
        assert c.get("/v1/model", headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_only_loopback_is_quiet():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert exposure_warning("127.0.0.1", ServeSettings()) is None
    warning = exposure_warning("0.0.0.0", ServeSettings())
    assert warning and "no authentication" in warning and "--api-key" in warning
    assert exposure_warning("0.0.0.0", ServeSettings(api_key="k")) is None


def test_cli_serve_warns_on_a_public_host_and_passes_the_settings(run_cli, monkeypatch, csv_run):
    import attrnet.serve.server as server

    calls = []
    monkeypatch.setattr(server, "serve", lambda source, **kw: calls.append((source, kw)))
    code, out, err = run_cli(["serve", csv_run["run"], "--host", "0.0.0.0", "--port", "8123", "--max-batch", "4",
                              "--max-wait-ms", "7", "--max-upload-mb", "3", "--max-files", "5"])
    assert code == 0, err
    assert "no authentication" in err
    source, kw = calls[0]
    assert source == str(csv_run["run"]) and kw["host"] == "0.0.0.0" and kw["port"] == 8123
    s = kw["settings"]
    assert (s.max_batch, s.max_wait_ms, s.max_upload_mb, s.max_files, s.api_key) == (4, 7.0, 3.0, 5, None)
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error, exit status 2
        run_cli(["serve", csv_run["run"], "--max-batch", "0"])
    assert exc.value.code == 2


def test_cli_serve_reports_a_missing_model_and_a_taken_port(run_cli, tmp_path):
    code, out, err = run_cli(["serve", tmp_path / "nothing", "--port", str(_free_port())])
    assert code == 2 and "model not found" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, out, err = run_cli(["serve", tmp_path / "nothing", "--port", str(s.getsockname()[1])])
    assert code == 2 and "cannot listen" in err


# ---------------------------------------------------------------- the page, the package


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith(("/", "data:")) and not ref.startswith("//") for ref in refs), refs
    for name, kind in (("app.js", "javascript"), ("app.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert not re.search(r"https?://|url\(|@import|//[a-z0-9.-]+\.[a-z]{2,}/", r.text), name
    assert '<meta name="viewport"' in page.text and 'lang="en"' in page.text


def test_static_files_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"serve/static/*"' in text


def test_serving_imports_no_training_code():
    code = ("import sys, attrnet.serve.app, attrnet.serve.server; "
            "print(','.join(m for m in sys.modules if m.startswith(('attrnet.engine', 'attrnet.paper.pipeline'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


@pytest.mark.slow
def test_onnx_runtime_serves_the_same_probabilities(csv_run, model, images, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from attrnet.inference.export import export_onnx

    path = export_onnx(load_model(csv_run["run"], device="cpu", tta="none", precision="fp32"),
                       tmp_path / "model.onnx")
    onnx_model = load_model(path, runtime="onnx")
    with TestClient(create_app(onnx_model)) as c:
        body = _post(c, [(p.name, p.read_bytes()) for p in images[:2]]).json()
        assert c.get("/v1/model").json()["runtime"] == "onnx"
    torch_model = load_model(csv_run["run"], device="cpu", tta="none", precision="fp32")
    expected = torch_model.predict(images[:2]).probabilities
    got = np.array([[res["attributes"][a]["probability"] for a in body["attributes"]] for res in body["results"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
