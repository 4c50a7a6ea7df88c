"""Load test of `attrnet serve`: the real server on 127.0.0.1, N requests from C concurrent clients, a tenth of
them malformed; requests/s, latency percentiles, counts by status, the server's RSS before and after. The same
load runs against the default batching and against --max-batch 1, in one invocation, so the ratio compares
like with like.

usage: python benchmarks/serve_load.py MODEL [--requests 2000] [--concurrency 16] [--bad-fraction 0.1]
       python benchmarks/serve_load.py --untrained resnet18:128      # no trained model: speed only
       python benchmarks/serve_load.py MODEL --ray-replicas 1,2      # also `serve --ray` with 1, then 2 replicas
MODEL: a run folder, a checkpoint or an exported folder. Images: --images DIR (default: the shared CelebA
sample when present, else synthetic faces). Prints one JSON line per configuration, then a Markdown table.
Bounded: at most --requests requests and --time-limit-s seconds per configuration, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "data" / "celeba-8k" / "img_align_celeba"
BOUNDARY = "attrnetLoadBoundary"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="run folder, checkpoint or exported folder")
    ap.add_argument("--untrained", metavar="BACKBONE:SIZE", help="serve a randomly initialised 40-attribute model "
                                                                 "instead (e.g. resnet18:128): speed only")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--images", help="folder of JPEG/PNG images to send (default: CelebA sample or synthetic)")
    ap.add_argument("--max-batch", type=int, default=32, help="the batched configuration's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--compare", type=int, default=1, help="the other configuration's --max-batch (0: skip it)")
    ap.add_argument("--time-limit-s", type=float, default=600, help="per configuration")
    ap.add_argument("--threads", type=int, default=0, help="the server's torch threads (0: torch's default)")
    ap.add_argument("--ray-replicas", default="", help="also serve on Ray Serve (serve --ray) with these replica "
                    "counts, one after the other, under the same load (e.g. 1,2; needs attrnet[ray])")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    if bool(args.model) == bool(args.untrained):
        ap.error("give MODEL or --untrained BACKBONE:SIZE")
    with tempfile.TemporaryDirectory(prefix="attrnet-load-") as tmp:
        model = args.model or untrained_model(args.untrained, Path(tmp) / "model")
        images = load_images(args.images, 64)
        configs = [args.max_batch] + ([args.compare] if args.compare else [])
        results = [run_config(model, b, args, images) for b in configs]
        for n in [int(r) for r in args.ray_replicas.split(",") if r.strip()]:
            results.append(run_config(model, args.max_batch, args, images, ray_replicas=n))
    for r in results:
        print(json.dumps(r), flush=True)
    print(markdown(results, args))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def untrained_model(spec: str, folder: Path) -> str:
    """An exported folder holding a randomly initialised network with CelebA's 40 attribute names."""
    import torch

    from attrnet.config import Config
    from attrnet.data.groups import CELEBA_GROUPS
    from attrnet.inference.export import export_hub
    from attrnet.inference.model import AttributeModel
    from attrnet.inference.sources import ModelInfo
    from attrnet.models.build import build_model
    from attrnet.models.factory import KIND_ATTRIBUTE_NET
    from attrnet.preprocessing import Preprocessing

    backbone, size = spec.split(":")
    cfg = Config()
    cfg.model.backbone, cfg.model.pretrained, cfg.data.image_size = backbone, False, int(size)
    names = sorted(n for group in CELEBA_GROUPS.values() for n in group)
    torch.manual_seed(0)
    net = build_model(cfg.model, len(names), 3).eval()
    info = ModelInfo(kind=KIND_ATTRIBUTE_NET, attributes=names, thresholds=np.full(len(names), 0.5),
                     preprocessing=Preprocessing(image_size=(int(size), int(size))), config=cfg.to_dict(),
                     groups=CELEBA_GROUPS)
    export_hub(AttributeModel(net, info, torch.device("cpu")), folder, card="untrained: for load tests only\n")
    return str(folder)


def load_images(folder: str | None, n: int) -> list[tuple[str, bytes]]:
    if folder or CELEBA.is_dir():
        files = sorted(p for p in Path(folder or CELEBA).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            return [(p.name, p.read_bytes()) for p in files[:n]]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append((f"synthetic{i:03d}.jpg", buf.getvalue()))
    return out


# ---------------------------------------------------------------- requests


def multipart(parts: list[tuple[str, str, bytes]]) -> bytes:
    body = b""
    for field, name, data in parts:
        body += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def malformed_requests(image: bytes) -> list[tuple[str, bytes, dict]]:
    """(kind, body, headers) of the bad uploads the server must refuse with a 4xx."""
    form = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, "PNG", optimize=True)
    return [
        ("not_an_image", multipart([("file", "notes.txt", b"plain text, not pixels\n" * 20)]), form),
        ("empty_file", multipart([("file", "empty.jpg", b"")]), form),
        ("no_file_field", multipart([("picture", "a.jpg", image)]), form),
        ("truncated_jpeg", multipart([("file", "cut.jpg", image[: len(image) // 2])]), form),
        ("decompression_bomb", multipart([("file", "bomb.png", bomb.getvalue())]), form),
        ("too_many_files", multipart([("file", f"{i}.jpg", image) for i in range(17)]), form),
        ("not_multipart", image, {"content-type": "image/jpeg"}),
        ("no_body", b"", form),
    ]


def plan(n: int, bad_fraction: float, images, bad) -> list[tuple[str, bytes, dict]]:
    """n requests; every round(1/bad_fraction)-th is malformed (kinds in turn), the others one image each."""
    form = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    every = round(1 / bad_fraction) if bad_fraction > 0 else 0
    out, b, g = [], 0, 0
    for i in range(n):
        if every and i % every == every - 1:
            out.append(bad[b % len(bad)])
            b += 1
        else:
            name, data = images[g % len(images)]
            out.append(("good", multipart([("file", name, data)]), form))
            g += 1
    return out


async def drive(url: str, requests, concurrency: int, time_limit: float) -> dict:
    """Send the planned requests from `concurrency` clients (one connection pool each); stop at time_limit."""
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies, statuses, errors, wrong = [], {}, [], []
    deadline = time.perf_counter() + time_limit

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as c:
            while not queue.empty() and time.perf_counter() < deadline:
                kind, body, headers = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if (kind == "good") != (r.status_code == 200) or (kind != "good" and not 400 <= r.status_code < 500):
                    wrong.append(f"{kind}: {r.status_code} {r.text[:120]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    pct = lambda q: round(float(np.percentile(lat, q)), 1) if lat.size else math.nan  # noqa: E731
    return {"sent": len(latencies) + len(errors), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "images_per_s": round(statuses.get(200, 0) / elapsed, 1),  # a good request carries one image
            "p50_ms": pct(50), "p95_ms": pct(95),
            "p99_ms": pct(99), "max_ms": round(float(lat.max()), 1) if lat.size else math.nan,
            "status": {str(k): v for k, v in sorted(statuses.items())},
            "5xx": sum(v for k, v in statuses.items() if k >= 500), "connection_errors": len(errors),
            "unexpected": wrong[:5], "n_unexpected": len(wrong), "errors": errors[:5]}


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float, threads: int,
                 ray_replicas: int = 0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    ray = ["--ray", "--replicas", str(ray_replicas)] if ray_replicas else []
    proc = subprocess.Popen([sys.executable, "-m", "attrnet", "serve", model, "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu", "--max-batch", str(max_batch), "--max-wait-ms",
                             str(max_wait_ms), *ray], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)  # Ray's own processes go with the server's group
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"attrnet serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("attrnet serve did not start within 180 s")


def batch_sizes(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("attrnet_batch_size_count", "attrnet_batch_size_sum")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("attrnet_batch_size_count", 0.0), values.get("attrnet_batch_size_sum", 0.0)


def replica_processes() -> list[psutil.Process]:
    """Ray Serve's replica actors of the attrnet deployment (their process titles name them)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any("ServeReplica:attrnet" in part for part in (p.info["cmdline"] or [])):
            found.append(p)
    return found


def run_config(model: str, max_batch: int, args, images, ray_replicas: int = 0) -> dict:
    proc, url = start_server(model, max_batch, args.max_wait_ms, args.threads, ray_replicas)
    try:
        # the process that runs the model: the server, or under Ray the replicas (RSS summed over them)
        replicas = replica_processes() if ray_replicas else []
        server = _Processes(replicas or [psutil.Process(proc.pid)])
        bad = malformed_requests(images[0][1])
        warm = plan(4 * args.concurrency, 0.0, images, bad)
        asyncio.run(drive(url, warm, args.concurrency, 120))  # first batches: lazy allocations, not counted
        rss_before = server.memory_info().rss
        count0, sum0 = batch_sizes(url)
        result = asyncio.run(drive(url, plan(args.requests, args.bad_fraction, images, bad), args.concurrency,
                                   args.time_limit_s))
        rss_after = server.memory_info().rss
        count1, sum1 = batch_sizes(url)
        alive = httpx.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        os.killpg(proc.pid, 15)  # the server and, under Ray, its local cluster
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    if ray_replicas:
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    return {"server": f"ray serve x{ray_replicas}" if ray_replicas else "attrnet serve",
            "replicas": ray_replicas or 1, "max_batch": max_batch, "max_wait_ms": args.max_wait_ms, "concurrency": args.concurrency,
            "requests": args.requests, "bad_fraction": args.bad_fraction, **result,
            "mean_batch": round((sum1 - sum0) / max(count1 - count0, 1), 2), "forward_passes": int(count1 - count0),
            "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
            "healthy_after": alive, "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2)}


class _Processes:
    """memory_info().rss summed over processes."""

    def __init__(self, procs: list[psutil.Process]):
        self.procs = procs

    def memory_info(self):
        class _Mem:
            rss = sum(p.memory_info().rss for p in self.procs)
        return _Mem()


def markdown(results: list[dict], args) -> str:
    head = ("| server | --max-batch | requests/s | images/s | p50 ms | p95 ms | p99 ms | mean batch | status counts | 5xx | "
            "connection errors | RSS before -> after (MB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    rows = [f"| {r['server']} | {r['max_batch']} | {r['requests_per_s']} | {r['images_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['mean_batch']} | {', '.join(f'{k}: {v}' for k, v in r['status'].items())} | {r['5xx']} | "
            f"{r['connection_errors']} | {r['rss_before_mb']} -> {r['rss_after_mb']} |" for r in results]
    out = "\n".join([head, *rows])
    if len(results) >= 2 and results[1]["requests_per_s"] and results[1]["server"] == "attrnet serve":
        out += (f"\n\nbatching (--max-batch {results[0]['max_batch']}) against --max-batch {results[1]['max_batch']}: "
                f"{results[0]['requests_per_s'] / results[1]['requests_per_s']:.2f}x the requests/s, p95 "
                f"{results[0]['p95_ms']} ms against {results[1]['p95_ms']} ms")
    return out


if __name__ == "__main__":
    main()
